"""The fixed set of problem types SPL classifies queries into."""

from __future__ import annotations

PROBLEM_TYPES: dict[str, str] = {
    "arithmetic": "calculations with numbers: sums, products, percentages, unit conversions",
    "algebra": "equations, unknowns, expressions and functions",
    "geometry": "shapes, angles, areas, volumes and coordinates",
    "word_problem": "a story with quantities that has to be turned into arithmetic",
    "probability_statistics": "chances, counting, averages and data",
    "logic": "deduction, puzzles, riddles and consistency of statements",
    "coding": "writing or explaining code in a programming language",
    "debugging": "finding and fixing the fault in code or a system",
    "algorithm_design": "designing an algorithm or data structure and its complexity",
    "planning": "steps, schedules and resources to reach a goal",
    "writing": "composing stories, letters, essays or other prose",
    "summarization": "condensing a text into its main points",
    "translation": "rendering text in another language",
    "factual_qa": "questions about facts, definitions and knowledge",
    "analysis": "comparing options, explaining causes, giving advice or opinions",
    "general": "anything else",
}

FALLBACK_TYPE = "general"
