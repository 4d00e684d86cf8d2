"""The routing simulator: many simulated peers in one Trio run with a virtual
clock, running the real coordinator, responder, experts (scripted models),
selection, evaluation and reputation code. See docs/simulation.md."""

from p2pnet.sim.run import run_scenario
from p2pnet.sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario", "run_scenario"]
