"""Reads a node's observability endpoints, for tests/observe.rs.

    http_probe.py status URL    prints {"status": CODE, "body": TEXT}
    http_probe.py metrics URL   parses the Prometheus text at URL with the official
                                Python client's parser (PyPI `prometheus_client`) and
                                prints {"samples": [[name, {labels}, value], ...]}

A page that does not parse makes the parser raise, and this script exit non-zero.
"""

import json
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main():
    mode, url = sys.argv[1], sys.argv[2]
    status, body = fetch(url)
    if mode == "status":
        print(json.dumps({"status": status, "body": body}))
        return
    if status != 200:
        sys.exit(f"{url}: HTTP {status}: {body}")
    samples = []
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.append([sample.name, sample.labels, sample.value])
    print(json.dumps({"samples": samples}))


main()
