"""The strategies and plugins that ship with Ponder. Add a built-in here: one import, one list
entry."""

from __future__ import annotations

from ponder.plugins.base import PluginFactory
from ponder.strategies.base import StrategyFactory


def builtin() -> list[StrategyFactory | PluginFactory]:
    from ponder.plugins.compact import Compact
    from ponder.plugins.deep_research import DeepResearch
    from ponder.plugins.executecode import ExecuteCode
    from ponder.plugins.json_mode import JsonMode
    from ponder.plugins.longcepo import LongCepo
    from ponder.plugins.mcp import Mcp
    from ponder.plugins.mem import EpisodicMemory
    from ponder.plugins.memory import Memory
    from ponder.plugins.privacy import Privacy
    from ponder.plugins.proxy import Proxy
    from ponder.plugins.readurls import ReadUrls
    from ponder.plugins.router import Router
    from ponder.plugins.web_search import WebSearchPlugin
    from ponder.spl.strategy import SystemPromptLearning
    from ponder.strategies.autothink import AutoThink
    from ponder.strategies.bon import BestOfN
    from ponder.strategies.cepo import PlanningOptimization
    from ponder.strategies.coc import ChainOfCode
    from ponder.strategies.cot_decoding import CoTDecoding
    from ponder.strategies.cot_reflection import CoTReflection
    from ponder.strategies.deepconf import DeepConf
    from ponder.strategies.deepthink import DeepThink
    from ponder.strategies.entropy_decoding import EntropyDecoding
    from ponder.strategies.genselect import GenSelect
    from ponder.strategies.leap import Leap
    from ponder.strategies.mars import MultiAgentReasoning
    from ponder.strategies.mcts import MonteCarloTreeSearch
    from ponder.strategies.moa import MixtureOfAgents
    from ponder.strategies.none import PassThrough
    from ponder.strategies.plansearch import PlanSearch
    from ponder.strategies.pvg import ProverVerifierGame
    from ponder.strategies.re2 import ReRead
    from ponder.strategies.react import ReAct
    from ponder.strategies.refine import SelfRefine
    from ponder.strategies.rstar import RStar
    from ponder.strategies.rto import RoundTrip
    from ponder.strategies.sc import MajorityVoting, SelfConsistency
    from ponder.strategies.thinkdeeper import ThinkDeeper
    from ponder.strategies.tot import TreeOfThoughts
    from ponder.strategies.z3 import SolverAided

    return [
        PassThrough,
        ReRead,
        SelfConsistency,
        MajorityVoting,
        DeepConf,
        AutoThink,
        BestOfN,
        TreeOfThoughts,
        MonteCarloTreeSearch,
        MixtureOfAgents,
        GenSelect,
        RoundTrip,
        ProverVerifierGame,
        PlanningOptimization,
        MultiAgentReasoning,
        PlanSearch,
        RStar,
        Leap,
        SelfRefine,
        CoTReflection,
        CoTDecoding,
        EntropyDecoding,
        ThinkDeeper,
        DeepThink,
        SolverAided,
        ReAct,
        ReadUrls,
        ChainOfCode,
        SystemPromptLearning,
        EpisodicMemory,
        Memory,
        Compact,
        LongCepo,
        JsonMode,
        Privacy,
        Proxy,
        Mcp,
        WebSearchPlugin,
        DeepResearch,
        Router,
        ExecuteCode,
    ]
