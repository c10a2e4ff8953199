"""Runnable examples of embedding pina-tff computations in other TFF stacks."""
