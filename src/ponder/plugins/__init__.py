"""Plugins: layers around a route. A plugin may change the conversation and the sampling
before the rest of its route runs, and the answer after; `readurls&sc-model` reads the linked
pages, then runs `sc` on the conversation with their text."""
