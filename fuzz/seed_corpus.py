#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ with every topic string of fixtures/vectors/topics.json.

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

targets = [
    "percent_decode", "property_bag", "topic_c2d", "topic_module_input",
    "topic_method_request", "topic_twin_response", "topic_desired_patch",
    "topic_dps_request", "topic_dps_response", "topic_device_publish",
    "topic_subscribe", "topic_hub_publish",
]
for target in targets:
    d = root / "fuzz/corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for s in strings:
        data = s.encode()
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
print(f"seeded {len(strings)} inputs into {len(targets)} corpora")
