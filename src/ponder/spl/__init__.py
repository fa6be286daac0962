"""System prompt learning: classify a query, select learned strategies, learn from outcomes."""
