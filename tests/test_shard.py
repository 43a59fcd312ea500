"""`netmon-collector shard`: one inventory split into collector configs so that every agency is in exactly one
shard, the same split on every run, few agencies moved when a shard is added, and configs the collector accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collector.cli import main as collector_main
from collector.shard import by_hash, shard_names
from tests.support.require import require_binary

ROOT = Path(__file__).resolve().parent.parent


def inventory_yaml(agencies: int, districts: int, queue: Path, extra: str = "") -> tuple[str, dict[str, str]]:
    """`agencies` agencies over `districts` districts (district d-0 the largest), one push agent each (two for
    every fifth agency), a remote_write out and a template for one agency."""
    env, lines = {}, ["listen: 127.0.0.1:9856", "external_labels: {province: tien-giang}", "agencies:"]
    lines += [f"  - {{id: ag-{a}, name: 'Cơ quan {a}', district: d-{min(a % (districts + 2), districts - 1)}, level: commune}}" for a in range(agencies)]
    lines.append("agents:")
    for a in range(agencies):
        for n in range(1, 3 if a % 5 == 0 else 2):
            env[f"SHARD_TOKEN_{a}_{n}"] = f"shard-token-{a}-{n}"
            lines.append(f"  - {{id: ag-{a}-{n}, agency: ag-{a}, mode: push, bearer_token: '${{SHARD_TOKEN_{a}_{n}}}'}}")
    lines += [
        "remote_write:", "  - url: http://127.0.0.1:8428/api/v1/write", f"    queue: {{directory: {queue}}}",
        "districts:", "  - {id: d-0, name: 'Huyện 0', vars: {router: 10.0.0.1}}",
    ]
    return "\n".join(lines) + "\n" + extra, env


@pytest.fixture(autouse=True)
def tokens_in_environment(monkeypatch):
    """The shard command loads the inventory as check-config does: its ${ENV} references must resolve."""
    for a in range(200):
        for n in (1, 2):
            monkeypatch.setenv(f"SHARD_TOKEN_{a}_{n}", f"shard-token-{a}-{n}")


def write_inventory(tmp_path: Path, agencies: int = 60, districts: int = 6, extra: str = "") -> Path:
    text, _ = inventory_yaml(agencies, districts, tmp_path / "queue", extra)
    path = tmp_path / "inventory.yml"
    path.write_text(text, encoding="utf-8")
    return path


def shard(inventory: Path, out: Path, shards: int, by: str = "hash", urls: tuple[str, ...] = ()) -> int:
    argv = ["shard", "--inventory", str(inventory), "--shards", str(shards), "--by", by, "--out", str(out)]
    return collector_main(argv + [arg for url in urls for arg in ("--url", url)])


def shard_configs(out: Path) -> dict[str, dict]:
    return {path.stem: yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(out.glob("shard-*.yml"))}


@pytest.mark.parametrize("by", ["hash", "district"])
def test_every_agency_and_its_agents_are_in_exactly_one_shard(tmp_path, by):
    inventory = write_inventory(tmp_path)
    assert shard(inventory, tmp_path / "out", 3, by) == 0
    configs = shard_configs(tmp_path / "out")
    placed = [entry["id"] for config in configs.values() for entry in config["agencies"]]
    agents = [(entry["id"], entry["agency"]) for config in configs.values() for entry in config["agents"]]
    source = yaml.safe_load(inventory.read_text())
    assert sorted(placed) == sorted(entry["id"] for entry in source["agencies"])
    assert sorted(agents) == sorted((entry["id"], entry["agency"]) for entry in source["agents"])
    for config in configs.values():
        assert {agency for _, agency in ((e["id"], e["agency"]) for e in config["agents"])} <= {e["id"] for e in config["agencies"]}
    assert all(config["agencies"] for config in configs.values())  # 60 agencies: no shard is empty


def test_district_shards_keep_districts_whole_and_balance_agents(tmp_path):
    inventory = write_inventory(tmp_path, agencies=120, districts=8)
    assert shard(inventory, tmp_path / "out", 3, "district") == 0
    configs = shard_configs(tmp_path / "out")
    districts = [{entry["district"] for entry in config["agencies"]} for config in configs.values()]
    assert sum(len(one) for one in districts) == len(set().union(*districts)) == 8
    agents = [len(config["agents"]) for config in configs.values()]
    source = yaml.safe_load(inventory.read_text())
    district_of = {entry["id"]: entry["district"] for entry in source["agencies"]}
    per_district: dict[str, int] = {}
    for entry in source["agents"]:
        per_district[district_of[entry["agency"]]] = per_district.get(district_of[entry["agency"]], 0) + 1
    assert max(agents) - min(agents) <= max(per_district.values()), (agents, per_district)  # packed: at most one district apart


def test_shards_are_the_same_on_every_run(tmp_path):
    inventory = write_inventory(tmp_path)
    assert shard(inventory, tmp_path / "a", 4) == 0
    assert shard(inventory, tmp_path / "b", 4) == 0
    for name in ("shard-1.yml", "shard-4.yml", "shards.yml", "prometheus-shards.yml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_adding_a_hash_shard_moves_only_the_agencies_the_new_shard_takes():
    agencies = [f"xa-{number}" for number in range(4000)]
    before = {agency: name for name, owned in by_hash(agencies, shard_names(4)).items() for agency in owned}
    after = {agency: name for name, owned in by_hash(agencies, shard_names(5)).items() for agency in owned}
    moved = [agency for agency in agencies if before[agency] != after[agency]]
    assert all(after[agency] == "shard-5" for agency in moved)  # nothing moves between the old shards
    assert 0.17 < len(moved) / len(agencies) < 0.23  # ~1/5
    counts = [len(owned) for owned in by_hash(agencies, shard_names(4)).values()]
    assert max(counts) - min(counts) < 0.1 * len(agencies) / 4


def test_shard_configs_pass_check_config_and_carry_shard_label_url_and_own_queue(tmp_path):
    extra = "templates:\n  - name: only-ag-4\n    select: {agencies: [ag-4]}\n    modules: {icmp: {prober: icmp}}\n" \
            "    targets: [{name: router, address: '{{ district.router }}', module: icmp}]\n"
    inventory = write_inventory(tmp_path, agencies=12, districts=2, extra=extra)
    urls = ("http://127.0.0.1:19801", "http://127.0.0.1:19802")
    assert shard(inventory, tmp_path / "out", 2, "district", urls) == 0
    configs = shard_configs(tmp_path / "out")
    for number, (name, config) in enumerate(configs.items()):
        check = subprocess.run(
            [sys.executable, "-m", "collector.cli", "check-config", str(tmp_path / "out" / f"{name}.yml")],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert check.returncode == 0 and ": OK (" in check.stdout, check.stderr
        assert config["external_labels"] == {"province": "tien-giang", "shard": name}
        assert config["listen"] == f"127.0.0.1:{19801 + number}"
        assert config["remote_write"][0]["url"] == "http://127.0.0.1:8428/api/v1/write"
        assert config["remote_write"][0]["queue"]["directory"] == str(tmp_path / "queue" / name)
        has_ag4 = any(entry["id"] == "ag-4" for entry in config["agencies"])
        assert [t["name"] for t in config.get("templates", [])] == (["only-ag-4"] if has_ag4 else [])
        assert [d["id"] for d in config.get("districts", [])] == (["d-0"] if any(e["district"] == "d-0" for e in config["agencies"]) else [])
    scrape = yaml.safe_load((tmp_path / "out" / "prometheus-shards.yml").read_text())["scrape_configs"][0]
    assert scrape["job_name"] == "netmon-collector" and scrape["honor_labels"] is True
    assert scrape["static_configs"] == [
        {"targets": ["127.0.0.1:19801"], "labels": {"shard": "shard-1"}}, {"targets": ["127.0.0.1:19802"], "labels": {"shard": "shard-2"}},
    ]
    shard_map = yaml.safe_load((tmp_path / "out" / "shards.yml").read_text())
    assert [one["push_url"] for one in shard_map["shards"]] == [f"{url}/api/v1/write" for url in urls]


def test_prometheus_accepts_the_generated_scrape_job(tmp_path):
    promtool = require_binary("promtool", "prometheus")
    inventory = write_inventory(tmp_path)
    assert shard(inventory, tmp_path / "out", 2) == 0
    check = subprocess.run([promtool, "check", "config", str(tmp_path / "out" / "prometheus-shards.yml")], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_shard_label_in_the_inventory_is_an_error_naming_file_line_and_key(tmp_path, capsys):
    inventory = write_inventory(tmp_path)
    inventory.write_text(inventory.read_text().replace("{province: tien-giang}", "{province: tien-giang, shard: a}"))
    assert shard(inventory, tmp_path / "out", 2) == 2
    assert f"{inventory}:2: external_labels.shard: the label 'shard' is set per shard" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_more_district_shards_than_districts_is_refused(tmp_path, capsys):
    inventory = write_inventory(tmp_path, districts=2)
    assert shard(inventory, tmp_path / "out", 3, "district") == 1
    assert "3 shards but the inventory has only 2 districts" in capsys.readouterr().err


def test_a_shard_that_names_itself_wrongly_is_refused_at_load(tmp_path, capsys):
    inventory = write_inventory(tmp_path)
    assert shard(inventory, tmp_path / "out", 2) == 0
    config = tmp_path / "out" / "shard-2.yml"
    config.write_text(config.read_text().replace("  shard: shard-2\n", "  shard: shard-1\n", 1))
    assert collector_main(["check-config", str(config)]) == 2
    assert "external_labels: a shard labels its series shard: shard-2" in capsys.readouterr().err
