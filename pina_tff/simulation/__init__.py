"""Simulation inputs: the population of clients as reduced tail features."""
