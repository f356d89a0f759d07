#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from fixtures/vectors: topics, SAS tokens, connection strings,
usernames.

Run from the repository root: python3 fuzz/seed_corpus.py
"""
import hashlib
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
vectors = json.loads((root / "fixtures/vectors/topics.json").read_text())

strings = set()
for name, cases in vectors.items():
    if not isinstance(cases, list) or name == "mqtt_connect":
        continue
    for case in cases:
        for key in ("topic", "expected_topic", "expected", "properties_preencoded"):
            value = case.get(key)
            if isinstance(value, str):
                strings.add(value)
                if "/" in value and key != "properties_preencoded":
                    # the bag part alone, for the property-bag and decode targets
                    strings.add(value.rsplit("/", 1)[-1])

def seed(target, inputs):
    d = root / "fuzz/corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for s in inputs:
        data = s.encode()
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def load(name):
    return json.loads((root / "fixtures/vectors" / name).read_text())


tokens = {c["input"] for c in load("sas_token_parse.json")["cases"] if isinstance(c.get("input"), str)}
tokens |= {c["expected_token"] for c in load("sas.json") if isinstance(c.get("expected_token"), str)}
seed("sas_token", tokens)
cs = load("connection_strings.json")
seed("connection_string", {c["input"] for c in cs["cases"] if isinstance(c.get("input"), str)})
seed("username", {c["expected"] for c in vectors["mqtt_connect"] if isinstance(c.get("expected"), str)})

targets = [
    "percent_decode", "property_bag", "topic_c2d", "topic_module_input",
    "topic_method_request", "topic_twin_response", "topic_desired_patch",
    "topic_dps_request", "topic_dps_response", "topic_device_publish",
    "topic_subscribe", "topic_hub_publish",
]
for target in targets:
    seed(target, strings)
print(f"seeded {len(strings)} topic inputs into {len(targets)} corpora, "
      f"{len(tokens)} tokens, and the connection-string and username corpora")
