"""Azure fidelity (issue 12 A): the differential corpus in tests/azure_corpus/
run through vmsnap's parser, vmsnap's model of Azure, and `vmsnap check --azure`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmsnap_native import azure, cycle
from vmsnap_native.config import AZURE_TIMEOUT_CAP as AZURE_CAP
from vmsnap_native.config import ConfigError, parse_config

CORPUS = Path(__file__).parent / "azure_corpus"
DATA = json.loads((CORPUS / "cases.json").read_text())
CASES = {c["name"]: c for c in DATA["cases"]}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="scripts and config must be root-owned")


def _subst(value, where: str):
    if isinstance(value, str):
        return value.replace("@DIR@", where)
    if isinstance(value, list):
        return [_subst(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, where) for k, v in value.items()}
    return value


def _files(specs: dict, where: Path):
    for name, spec in specs.items():
        parent = where / spec.get("dir", "")
        if not parent.exists():
            parent.mkdir()
            os.chmod(parent, int(spec.get("dir_mode", "0700"), 8))
        body = spec["text"].encode() if "text" in spec else (CORPUS / spec["file"]).read_bytes()
        (parent / name).write_bytes(body)
        os.chmod(parent / name, int(spec["mode"], 8))


def build(case: dict, tmp_path: Path):
    """The case's directory, scripts and configuration file; returns (path, bytes)."""
    where = tmp_path / "case"
    where.mkdir(mode=0o700)
    scripts = dict(DATA["defaults"]["scripts"], **case.get("scripts", {}))
    _files(scripts, where)
    if "hooks" in case:
        (where / "hooks.d").mkdir(mode=0o700)
        _files(case["hooks"], where / "hooks.d")
    if "config_text" in case:
        data = _subst(case["config_text"], str(where)).encode("utf-8")
    elif "config_file" in case and "patch" not in case:
        data = (CORPUS / case["config_file"]).read_bytes()
    else:
        if "config_file" in case:
            doc = json.loads((CORPUS / case["config_file"]).read_text())
        else:
            doc = dict(case.get("config", DATA["defaults"]["config"]))
        doc.update(case.get("patch", {}))
        data = json.dumps(_subst(doc, str(where)), indent=2).encode()
    path = where / "VMSnapshotScriptPluginConfig.json"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return str(path), data


@needs_root
@pytest.mark.parametrize("name", list(CASES))
def test_vmsnap_reads_the_case_as_recorded(name, tmp_path):
    case = CASES[name]
    path, data = build(case, tmp_path)
    want = case["vmsnap"]
    if want["config"] == 305:
        with pytest.raises(ConfigError) as ei:
            parse_config(data, path)
        assert want["error"] in str(ei.value)
        return
    cfg = parse_config(data, path)
    for attr, value in want.get("values", {}).items():
        assert getattr(cfg, attr) == _subst(value, str(tmp_path / "case")), attr
    for text in want.get("warnings", []):
        assert any(text in w for w in cfg.warnings), (text, cfg.warnings)
    if not want.get("warnings"):
        assert not any("Azure would" in w for w in cfg.warnings), cfg.warnings


@needs_root
@pytest.mark.parametrize("name", list(CASES))
def test_azure_model_gives_the_recorded_azure_code(name, tmp_path):
    case = CASES[name]
    _, data = build(case, tmp_path)
    view = azure.azure_config_view(data)
    code = view.code
    if code == 0:
        code = (azure._azure_script_code(view.doc["preScriptLocation"], "pre") or
                azure._azure_script_code(view.doc["postScriptLocation"], "post"))
    assert code == case["azure"]["code"], case["azure"]["does"]


@needs_root
@pytest.mark.parametrize("name", list(CASES))
def test_check_azure_lists_the_documented_divergences(name, tmp_path):
    case = CASES[name]
    path, _ = build(case, tmp_path)
    rep = azure.report(path)
    topics = {d["topic"] for d in rep["differences"]}
    expected = set(case["report"])
    assert expected <= topics <= expected | set(case.get("report_may_include", [])), \
        rep["differences"]
    for d in rep["differences"]:
        assert d["azure"] and d["vmsnap"] and d["where"]
    if "code" in case["vmsnap"]:
        plan = cycle.make_plan(path)
        codes = {c.problem.code for c in (plan.pre_check, plan.post_check) if not c.ok}
        assert case["vmsnap"]["code"] in codes


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vmsnap_native", *args], capture_output=True,
                          text=True, timeout=60)


@needs_root
def test_cli_check_azure_json_and_exit_status(tmp_path):
    path, _ = build(CASES["string-false-continue"], tmp_path)
    p = _cli("check", "--azure", "--json", "--config", path)
    assert p.returncode == 1, p.stderr
    rep = json.loads(p.stdout)
    [d] = rep["differences"]
    assert d["topic"] == "string-boolean" and d["where"] == "continueBackupOnFailure"
    assert "so \"false\" is true" in d["azure"] and "as false" in d["vmsnap"]
    assert "[string-boolean] continueBackupOnFailure" in p.stderr
    assert rep["azure"]["config_code"] == 0 and rep["azure"]["timeout"] == 30


@needs_root
def test_plain_check_accepts_the_azure_form_and_warns_what_azure_does(tmp_path):
    path, _ = build(CASES["string-false-continue"], tmp_path)
    p = _cli("check", "--config", path)
    assert p.returncode == 0, p.stderr
    assert "continueBackupOnFailure: reads the string \"false\" as false; Azure would read " \
           "any non-empty string as true (so \"false\" is true)" in p.stderr
    assert "all good" in p.stderr


@needs_root
def test_cli_check_azure_without_differences(tmp_path):
    path, _ = build(CASES["microsoft-template-filled-in"], tmp_path)
    p = _cli("check", "--azure", "--config", path)
    assert p.returncode == 0 and "no difference: Azure would do the same" in p.stderr
    assert p.stdout == ""


@needs_root
def test_cli_check_azure_says_why_azure_rejects(tmp_path):
    path, _ = build(CASES["timeout-as-string"], tmp_path)
    p = _cli("check", "--azure", "--config", path)
    assert p.returncode == 1
    assert "Azure would reject it: PluginhostConfigParsing (304)" in p.stderr


# Each bash-only construct the report looks for, with a line that shows it:
# it runs under bash and fails (or prints something else) under dash.
BASHISM_LINES = [
    ("[[ a == a ]]", "`[[ ... ]]`"),
    ("function f { :; }; f", "`function name`"),
    ("a=(1 2)", "array assignment"),
    ("a=x; echo ${a[0]}", "array subscript"),
    ("source /dev/null", "`source`"),
    ("[ a == a ]", "`==` in [ ]"),
    ("cat <<< x", "here-string"),
    ('x=$(< /proc/version); [ -n "$x" ]', "`$(< file)`"),
    ("echo hi &> /dev/null; wait", "`&>`"),
    ("declare x=1", "`declare`"),
    ("a=abc; echo ${a/b/x}", "${var/pattern/replacement}"),
    ("a=abc; echo ${a:1}", "${var:offset}"),
    ("echo -e x", "`echo -e`"),
]


@pytest.mark.skipif(not (shutil.which("dash") and shutil.which("bash")), reason="needs dash and bash")
@pytest.mark.parametrize("line,what", BASHISM_LINES)
def test_each_reported_bashism_really_breaks_under_dash(line, what):
    assert [w for _, w in azure.bashisms(line) if what in w], azure.bashisms(line)
    under = {sh: subprocess.run([sh, "-c", line], capture_output=True, text=True, timeout=10)
             for sh in ("bash", "dash")}
    assert under["bash"].returncode == 0 and not under["bash"].stderr
    assert (under["dash"].returncode, under["dash"].stdout) != (0, under["bash"].stdout)


def test_every_bashism_pattern_has_a_line_above():
    covered = {w for line, _ in BASHISM_LINES for _, w in azure.bashisms(line)}
    assert covered == {what for _, what in azure.BASHISMS}


def test_posix_scripts_and_here_documents_are_not_bashisms():
    for name in ("sh_ok.sh", "oracle_style_pre.sh", "oracle_style_post.sh"):
        assert azure.bashisms((CORPUS / "scripts" / name).read_text()) == [], name
    text = "cat <<EOF\n[[ a ]] function x\nEOF\ncat <<-'SQL'\n\tsource x\n\tSQL\n# [[ comment\n"
    assert azure.bashisms(text) == []


def test_corpus_names_a_source_and_licence_for_every_file():
    readme = (CORPUS / "README.md").read_text()
    used = {c.get("config_file") for c in DATA["cases"]} - {None}
    for c in DATA["cases"]:
        assert c["source"] and c["azure"]["does"]
        for spec in list(c.get("scripts", {}).values()) + list(c.get("hooks", {}).values()):
            if "file" in spec:
                used.add(spec["file"])
    used |= {s["file"] for s in DATA["defaults"]["scripts"].values()}
    on_disk = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
               if p.is_file() and p.name not in ("README.md", "cases.json")}
    assert used == on_disk
    for f in on_disk:
        assert os.path.basename(f) in readme, f


# -- against Microsoft's own code, when a copy is at hand ---------------------------------
# VMSNAP_AZURE_REFERENCE=/path/to/azure-linux-extensions/VMBackup/main runs each case
# through the real ScriptRunner (nothing of it is kept in this repository).
REFERENCE = os.environ.get("VMSNAP_AZURE_REFERENCE")


@pytest.fixture(scope="module")
def reference_runner():
    if not REFERENCE:
        pytest.skip("set VMSNAP_AZURE_REFERENCE to azure-linux-extensions' VMBackup/main")
    import importlib
    import types
    saved = {k: sys.modules.get(k) for k in ("Utils", "Utils.HandlerUtil", "common",
                                              "ScriptRunner")}
    utils, handler = types.ModuleType("Utils"), types.ModuleType("Utils.HandlerUtil")
    # its telemetry hook is the only thing it needs from the extension's utilities
    handler.HandlerUtility = type("HandlerUtility", (), {
        "add_to_telemetery_data": staticmethod(lambda key, value: None)})
    utils.HandlerUtil = handler
    sys.modules.update({"Utils": utils, "Utils.HandlerUtil": handler})
    sys.path.insert(0, REFERENCE)
    try:
        yield importlib.import_module("ScriptRunner").ScriptRunner
    finally:
        sys.path.remove(REFERENCE)
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _SilentLog:
    def log(self, *args, **kwargs):
        pass


@needs_root
@pytest.mark.parametrize("name", list(CASES))
def test_microsofts_script_runner_gives_the_recorded_code(name, tmp_path, monkeypatch,
                                                           reference_runner):
    path, _ = build(CASES[name], tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")   # a relative path finds nothing, as in the agent
    runner = reference_runner(_SilentLog(), "ScriptRunner", path, AZURE_CAP)
    try:
        code = runner.validate_scripts()[0]
    except Exception:   # its plugin host turns any escaping exception into 304
        code = 304
    assert code == CASES[name]["azure"]["code"], CASES[name]["azure"]["does"]


@needs_root
def test_check_azure_passes_when_only_vmsnap_extensions_differ(tmp_path):
    """A migration gate: vmsnap-only fields (Azure reads past them) are
    listed but exit 0; a value Azure reads differently still exits 1."""
    base = CASES["microsoft-template-filled-in"]
    case = dict(base, patch=dict(base["patch"], freezeTimeoutInSeconds=20,
                                 mountsToSkip=["/boot"]))
    path, _ = build(case, tmp_path)
    p = _cli("check", "--azure", "--json", "--config", path)
    rep = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr
    assert {d["where"] for d in rep["differences"]} == {"freezeTimeoutInSeconds", "mountsToSkip"}
    assert all(d["extension"] for d in rep["differences"]) and rep["behaves_differently"] is False
    assert "Azure would do the same, without the extensions: 2 vmsnap-only fields" in p.stderr
    doc = json.loads(Path(path).read_text())
    doc["continueBackupOnFailure"] = "false"
    Path(path).write_text(json.dumps(doc))
    p = _cli("check", "--azure", "--json", "--config", path)
    rep = json.loads(p.stdout)
    assert p.returncode == 1 and rep["behaves_differently"] is True
    assert "1 difference from Azure; also 2 vmsnap-only fields" in p.stderr
