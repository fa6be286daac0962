"""`ponder bench`: what each strategy buys, in accuracy, tokens, backend calls and time."""
