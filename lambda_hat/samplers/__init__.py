"""Samplers, one module each (BlackJAX style: state NamedTuple, init/step pairs)."""
