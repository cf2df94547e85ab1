"""Generated two-word ``adjective-animal`` flow-run names, as 1.x gave them."""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crimson", "curious",
    "daring", "eager", "elegant", "fancy", "fearless", "gentle", "golden", "graceful",
    "happy", "honest", "humble", "icy", "jolly", "keen", "lively", "lucky", "mellow",
    "mighty", "misty", "nimble", "noble", "olive", "patient", "polite", "proud", "quick",
    "quiet", "rapid", "royal", "rustic", "shiny", "silent", "silver", "smart", "snowy",
    "solid", "steady", "sturdy", "sunny", "swift", "tidy", "tough", "vivid", "warm", "wise",
    "witty", "zealous",
)
ANIMALS = (
    "albatross", "alpaca", "antelope", "badger", "bat", "bear", "beaver", "bison", "bobcat",
    "buffalo", "camel", "caribou", "cheetah", "cobra", "condor", "cougar", "coyote", "crane",
    "dingo", "dolphin", "eagle", "falcon", "ferret", "finch", "fox", "gazelle", "gecko",
    "gibbon", "heron", "hyena", "ibis", "jackal", "jaguar", "koala", "lemur", "leopard",
    "lynx", "marmot", "mink", "moose", "narwhal", "ocelot", "okapi", "orca", "otter",
    "panda", "pelican", "puffin", "quail", "raven", "salmon", "seal", "sparrow", "tapir",
    "tiger", "toucan", "walrus", "weasel", "wolf", "wombat", "yak", "zebra",
)


def generate_run_name() -> str:
    return f"{secrets.choice(ADJECTIVES)}-{secrets.choice(ANIMALS)}"
