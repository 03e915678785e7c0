"""Parses /metrics text with the Prometheus project's own Python client.

usage: prom_parse.py classic|openmetrics < text
Prints one JSON object per sample: family, type, name, labels, value.
A parse error is a traceback and a non-zero exit: the test fails.
"""
import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_classic

parse = parse_openmetrics if sys.argv[1] == "openmetrics" else parse_classic
for family in parse(sys.stdin.read()):
    for sample in family.samples:
        print(
            json.dumps(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }
            )
        )
