"""The README and docs/ say only what the code does: their commands, requests, snippets and links are checked
against it, without data, a model or a network.

- `jmvae ...` in a shell block (```bash, ```sh, ```shell, ```console) parses with the real `jmvae` parser, and
  every option of a `jmvae ...` usage synopsis (```text) is one of its subcommand's options;
- `python -m bench.X` / `jmvae.X` (also under torchrun) and `python bench/x.py`, `bash .ci/x` name files that exist,
  and a bench or repository script's `--options` are ones its source declares (they are not run: they need data);
- `curl` hits a method and path of the app's OpenAPI document, sends only the form parts it documents (files
  where it takes files) or a JSON body of its request schema's properties, with attribute names CelebA has;
- ```python blocks compile, and the `jmvae` names they import exist;
- every relative link points to a file that exists, and its #anchor to a heading there.

The files are read relative to this checkout (ROOT); the code they are checked against is the installed `jmvae`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from jmvae.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def expect(ok: object, message: str) -> None:
    """Fail with the message alone: it names the page, the line and what is wrong."""
    if not ok:
        pytest.fail(message, pytrace=False)


# --- reading the pages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    where: str  # page:line
    text: str  # the command line as written (continuations joined)
    argv: tuple[str, ...]  # one simple command: no operators, redirections or leading VAR=value

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@cache
def fenced_blocks(page: Path) -> tuple[Block, ...]:
    blocks: list[Block] = []
    start, marker, lang, indent = 0, "", "", 0  # the open block, while marker is set
    body: list[str] = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$", line)
        if not marker:
            if fence:
                start, indent, marker, lang, body = number, len(fence.group(1)), fence.group(2), fence.group(3), []
        elif fence and fence.group(2)[0] == marker[0] and len(fence.group(2)) >= len(marker) and not fence.group(3):
            blocks.append(Block(page, start, lang.lower(), tuple(body)))
            marker = ""
        else:  # a fence indented under a list item: its lines carry the same indent
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
    if marker:
        pytest.fail(f"{_rel(page)}:{start}: a code fence is never closed", pytrace=False)
    return tuple(blocks)


def _strip_comment(line: str) -> str:
    """Cut a shell comment: a # outside quotes at the start of a word."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, text) of each command line: console output skipped, `$ ` prompts and `\\` continuations
    joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.lines, 1):
        number = block.line + offset
        if pending is None:
            if block.lang == "console" and not raw.startswith("$ "):
                continue  # output
            text = raw.removeprefix("$ ")
            start = number
        else:
            start, text = pending[0], pending[1] + " " + raw.strip()
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1])
            continue
        pending = None
        if _strip_comment(text).strip():
            out.append((start, text.strip()))
    if pending is not None:
        out.append(pending)
    return out


def _split_commands(where: str, text: str) -> list[Command]:
    lexer = shlex.shlex(_strip_comment(text), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError as e:  # unbalanced quotes
        pytest.fail(f"{where}: cannot split {text!r} as a shell command: {e}", pytrace=False)
    commands: list[list[str]] = []
    current: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in {"&&", "||", ";", "|", "&", "|&"}:
            commands.append(current)
            current = []
        elif token in {">", ">>", "<", ">&", "&>", "<<", "<<<"}:
            if current and current[-1].isdigit():
                current.pop()  # 2> file
            skip = True
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv = argv[1:]  # OMP_NUM_THREADS=1 jmvae ...
        if argv:
            out.append(Command(where, text, tuple(argv)))
    return out


@cache
def shell_commands() -> tuple[Command, ...]:
    out = []
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.lang in SHELL_LANGS:
                for number, text in _logical_lines(block):
                    out.extend(_split_commands(f"{_rel(page)}:{number}", text))
    return tuple(out)


def _program(command: Command) -> str:
    return Path(command.argv[0]).name


def _is_python(program: str) -> bool:
    return re.fullmatch(r"python(3(\.\d+)?)?", program) is not None


def _module_run(command: Command) -> tuple[str, list[str]] | None:
    """(module, its arguments) of `python -m MODULE ...` or `torchrun ... -m MODULE ...`."""
    if (_is_python(_program(command)) or _program(command) == "torchrun") and "-m" in command.argv:
        i = command.argv.index("-m")
        if i + 1 < len(command.argv):
            return command.argv[i + 1], list(command.argv[i + 2 :])
    return None


def _script_run(command: Command) -> tuple[str, list[str]] | None:
    """(script path, its arguments) of `python path.py ...` or `bash path ...` with a path in this repository."""
    program = _program(command)
    if (
        (_is_python(program) or program in {"bash", "sh"})
        and len(command.argv) > 1
        and not command.argv[1].startswith("-")
        and "/" in command.argv[1]
    ):
        return command.argv[1], list(command.argv[2:])
    return None


def jmvae_commands() -> list[tuple[Command, list[str]]]:
    out = []
    for command in shell_commands():
        run = _module_run(command)
        if _program(command) == "jmvae":
            out.append((command, list(command.argv[1:])))
        elif run and run[0] == "jmvae.cli":  # python -m jmvae.cli, torchrun -m jmvae.cli
            out.append((command, run[1]))
    return out


def module_commands() -> list[tuple[Command, str, list[str]]]:
    return [
        (c, *run) for c in shell_commands() if (run := _module_run(c)) and run[0].split(".")[0] in {"bench", "jmvae"}
    ]


def script_commands() -> list[tuple[Command, str, list[str]]]:
    return [(c, *run) for c in shell_commands() if (run := _script_run(c))]


def curl_commands() -> list[Command]:
    return [c for c in shell_commands() if _program(c) == "curl"]


def synopses() -> list[tuple[str, str]]:
    """(page:line, text) of the `jmvae SUBCOMMAND [--option ...]` usage lines of ```text blocks."""
    out = []
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.lang == "text":
                for number, text in _logical_lines(block):
                    if text.startswith("jmvae "):
                        out.append((f"{_rel(page)}:{number}", text))
    return out


def python_blocks() -> list[Block]:
    return [b for page in PAGES for b in fenced_blocks(page) if b.lang in {"python", "py"}]


def _ids(items: list[Any]) -> list[str]:
    """page:line of each parameter set, so that a failure names where to look."""
    first = [item[0] if isinstance(item, tuple) else item for item in items]
    return [f"{_rel(x.page)}:{x.line}" if isinstance(x, Block) else getattr(x, "where", str(x)) for x in first]


# --- what the pages are checked against -----------------------------------------------------------------------


@cache
def cli_parser() -> argparse.ArgumentParser:
    return build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@cache
def openapi() -> dict[str, Any]:
    from jmvae.service.app import create_app  # builds the routes; the model is loaded only at start-up

    app = create_app()
    schema = app.openapi()
    hidden: dict[str, set[str]] = {}  # routes the schema leaves out: the web page, /docs, /openapi.json
    for route in app.routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is not None and methods and path not in schema["paths"]:
            hidden.setdefault(path, set()).update(m.lower() for m in methods)
    return {"schema": schema, "hidden": hidden}


@cache
def attribute_names() -> frozenset[str]:
    from jmvae.training.data import CELEBA_ATTRIBUTES

    return frozenset(CELEBA_ATTRIBUTES)


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _declared_options(source: Path) -> set[str]:
    """The --options a script's source spells out (its add_argument calls, and any other literal)."""
    return set(re.findall(r"""["'](--[A-Za-z0-9][A-Za-z0-9_-]*)["']""", source.read_text()))


def _check_options(what: str, source: Path, args: list[str]) -> None:
    declared = _declared_options(source)
    used = {a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2}
    unknown = sorted(used - declared)
    expect(not unknown, f"{what}: {_rel(source)} declares no {', '.join(unknown)}")


# --- the checks -----------------------------------------------------------------------------------------------


def test_the_pages_hold_what_is_checked() -> None:
    """A guard on the extraction itself: if it silently found nothing, every check below would pass."""
    assert len(PAGES) >= 2, PAGES
    programs = {_program(c) for c in shell_commands()}
    assert {"jmvae", "curl"} <= programs, programs
    assert len(jmvae_commands()) >= 3 and len(curl_commands()) >= 5 and module_commands() and synopses()
    assert python_blocks() and links()
    # The README opens with the two commands for a fresh machine: set up and serve, set up and test.
    first = fenced_blocks(ROOT / "README.md")[0]
    argvs = [c.argv for number, text in _logical_lines(first) for c in _split_commands(f"README.md:{number}", text)]
    expect(
        first.lang in SHELL_LANGS
        and (".venv/bin/jmvae", "serve") in argvs
        and (".venv/bin/python", "-m", "pytest", "-q") in argvs,
        f"README.md:{first.line}: the first block must set up and serve, then set up and test; it runs {argvs}",
    )


@pytest.mark.parametrize("command, args", jmvae_commands(), ids=_ids(jmvae_commands()))
def test_jmvae_commands_parse(command: Command, args: list[str]) -> None:
    parser, err = cli_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as e:
        pytest.fail(
            f"{command}\n  the jmvae parser refuses it (exit {e.code}): {err.getvalue().strip().splitlines()[-1:]}",
            pytrace=False,
        )


@pytest.mark.parametrize("where, text", synopses(), ids=[w for w, _ in synopses()])
def test_jmvae_synopses_name_real_options(where: str, text: str) -> None:
    words = text.split()
    subcommands = _subparsers(cli_parser())
    expect(words[1] in subcommands, f"{where}: {text}\n  jmvae has no subcommand {words[1]!r}")
    options = subcommands[words[1]]._option_string_actions
    for option in re.findall(r"(--[a-z][a-z0-9-]*)", text):
        expect(option in options, f"{where}: {text}\n  `jmvae {words[1]}` has no option {option}")
    for option, listed in re.findall(r"(--[a-z][a-z0-9-]*)[ =]([\w.-]+(?:\|[\w.-]+)+)", text):
        choices = options[option].choices
        if choices is not None:
            extra = set(listed.split("|")) - set(choices)
            expect(not extra, f"{where}: {text}\n  {option} takes {sorted(choices)}, not {sorted(extra)}")


@pytest.mark.parametrize("command, module, args", module_commands(), ids=_ids(module_commands()))
def test_modules_named_by_commands_exist(command: Command, module: str, args: list[str]) -> None:
    if module.startswith("bench."):
        path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        package = ROOT.joinpath(*module.split("."), "__main__.py")
        expect(path.is_file() or package.is_file(), f"{command}\n  no {_rel(path)} in this checkout")
        _check_options(str(command), path if path.is_file() else package, args)
        return
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.fail(f"{command}\n  {module} is not importable (if it is new: pip install -e '.[dev]')", pytrace=False)
    if spec.submodule_search_locations is not None:  # a package runs through its __main__
        expect(
            importlib.util.find_spec(f"{module}.__main__") is not None,
            f"{command}\n  {module} is a package without __main__, so `-m {module}` cannot run it",
        )


@pytest.mark.parametrize("command, script, args", script_commands(), ids=_ids(script_commands()))
def test_scripts_named_by_commands_exist(command: Command, script: str, args: list[str]) -> None:
    path = ROOT / script
    expect(path.is_file(), f"{command}\n  no {script} in this checkout")
    if path.suffix == ".py":
        _check_options(str(command), path, args)


CURL_VALUE_OPTIONS = {
    "-F": "form",
    "--form": "form",
    "-d": "data",
    "--data": "data",
    "--data-raw": "data",
    "--data-binary": "data",
    "--json": "json",
    "-H": "header",
    "--header": "header",
    "-X": "method",
    "--request": "method",
    "-o": None,
    "--output": None,
    "-u": None,
    "--user": None,
    "-m": None,
    "--max-time": None,
    "--connect-timeout": None,
    "-w": None,
    "--write-out": None,
    "-A": None,
    "--user-agent": None,
    "--retry": None,
}
CURL_FLAGS = {
    "-s",
    "-S",
    "-sS",
    "-f",
    "-fsS",
    "-sf",
    "--fail",
    "--fail-with-body",
    "--silent",
    "--show-error",
    "-i",
    "--include",
    "-v",
    "--verbose",
    "-L",
    "--location",
    "-I",
    "--head",
    "--compressed",
    "-N",
    "--no-buffer",
    "-O",
    "--remote-name",
}


def _parse_curl(command: Command) -> dict[str, Any]:
    parsed: dict[str, Any] = {"form": [], "data": [], "json": [], "header": [], "method": None, "url": []}
    argv = list(command.argv[1:])
    while argv:
        arg = argv.pop(0)
        if arg in CURL_VALUE_OPTIONS:
            expect(argv, f"{command}\n  {arg} needs a value")
            value = argv.pop(0)
            kind = CURL_VALUE_OPTIONS[arg]
            if kind:
                parsed[kind] = value if kind == "method" else parsed[kind] + [value]
        elif arg in CURL_FLAGS:
            parsed["head"] = parsed.get("head") or arg in {"-I", "--head"}
        elif re.match(r"https?://", arg):
            parsed["url"].append(arg)
        else:
            pytest.fail(
                f"{command}\n  {arg!r}: a curl argument this test does not know; teach it "
                "(CURL_VALUE_OPTIONS / CURL_FLAGS in tests/test_docs.py)",
                pytrace=False,
            )
    expect(len(parsed["url"]) == 1, f"{command}\n  expected one http(s) URL, found {parsed['url']}")
    return parsed


def _strict_json(where: str, text: str) -> Any:
    def refuse(constant: str) -> Any:
        pytest.fail(f"{where}\n  {constant} in JSON: the service refuses it", pytrace=False)

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as e:
        pytest.fail(f"{where}\n  not JSON ({e}): {text}", pytrace=False)


def _check_attribute_names(where: str, values: Any, field: str) -> None:
    expect(isinstance(values, dict), f"{where}\n  {field} must be a JSON object of attribute values")
    unknown = sorted(set(values) - attribute_names())
    expect(not unknown, f"{where}\n  {field}: no CelebA attribute is called {', '.join(unknown)}")


@pytest.mark.parametrize("command", curl_commands(), ids=_ids(curl_commands()))
def test_curl_requests_match_the_openapi_document(command: Command) -> None:
    curl = _parse_curl(command)
    where = str(command)
    body_given = curl["form"] or curl["data"] or curl["json"]
    method = (curl["method"] or ("head" if curl.get("head") else "post" if body_given else "get")).lower()
    path = urlsplit(curl["url"][0]).path or "/"
    schema, hidden = openapi()["schema"], openapi()["hidden"]
    operations = schema["paths"].get(path)
    if operations is None:
        expect(
            method in hidden.get(path, set()),
            f"{where}\n  {method.upper()} {path} is not in the OpenAPI document (paths: {sorted(schema['paths'])})",
        )
        return
    expect(method in operations, f"{where}\n  {path} answers {sorted(operations)}, not {method}")
    operation = operations[method]
    content = operation.get("requestBody", {}).get("content", {})
    headers = {}
    for header in curl["header"]:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()

    if curl["form"]:
        expect("multipart/form-data" in content, f"{where}\n  {path} takes {sorted(content) or 'no body'}, not a form")
        form = _resolve(schema, content["multipart/form-data"]["schema"])
        parts = form.get("properties", {})
        sent = []
        for field in curl["form"]:
            name, eq, value = field.partition("=")
            expect(eq, f"{where}\n  -F {field!r} is not NAME=VALUE")
            expect(name in parts, f"{where}\n  {path} documents the parts {sorted(parts)}, not {name!r}")
            is_file = value.startswith("@")
            wants_file = parts[name].get("format") == "binary"
            expect(
                is_file == wants_file,
                f"{where}\n  part {name!r} must be {f'a file (-F {name}=@FILE)' if wants_file else 'a plain field'}",
            )
            if not is_file and value.lstrip()[:1] in "{[":
                parsed = _strict_json(where, value)
                if name == "changes":
                    _check_attribute_names(where, parsed, name)
            sent.append(name)
        missing = sorted(set(form.get("required", [])) - set(sent))
        expect(not missing, f"{where}\n  {path} requires the parts {missing}")
        repeated = sorted({n for n in sent if sent.count(n) > 1})
        expect(not repeated, f"{where}\n  each part must come once: {repeated}")
    elif curl["data"] or curl["json"]:
        expect("application/json" in content, f"{where}\n  {path} takes {sorted(content) or 'no body'}, not JSON")
        expect(
            curl["json"] or headers.get("content-type", "").split(";")[0] == "application/json",
            f"{where}\n  curl -d sends application/x-www-form-urlencoded: add -H 'Content-Type: application/json'",
        )
        (text,) = curl["data"] + curl["json"]
        expect(not text.startswith("@"), f"{where}\n  a body read from a file cannot be checked here; inline it")
        body = _strict_json(where, text)
        request = _resolve(schema, content["application/json"]["schema"])
        expect(isinstance(body, dict), f"{where}\n  the body must be a JSON object")
        unknown = sorted(set(body) - set(request.get("properties", {})))
        expect(not unknown, f"{where}\n  {path}'s body has no fields {unknown} (only {sorted(request['properties'])})")
        missing = sorted(set(request.get("required", [])) - set(body))
        expect(not missing, f"{where}\n  {path}'s body requires {missing}")
        if "attributes" in body:
            _check_attribute_names(where, body["attributes"], "attributes")
    else:
        expect(not operation.get("requestBody", {}).get("required"), f"{where}\n  {path} requires a body")

    accept = headers.get("accept")
    if accept and accept != "*/*":
        answers = operation["responses"].get("200", {}).get("content", {})
        expect(accept in answers, f"{where}\n  {path} answers {sorted(answers)}, not {accept}")


@pytest.mark.parametrize("block", python_blocks(), ids=_ids(python_blocks()))
def test_python_snippets_compile_and_import_what_exists(block: Block) -> None:
    where = f"{_rel(block.page)}:{block.line}"
    try:
        tree = ast.parse("\n".join(block.lines))
    except SyntaxError as e:
        pytest.fail(f"{where}: the snippet does not compile: {e}", pytrace=False)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jmvae":
            module = importlib.import_module(node.module)
            for alias in node.names:
                expect(hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jmvae":
                    importlib.import_module(alias.name)


# --- links ----------------------------------------------------------------------------------------------------


def _prose_lines(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside code blocks, inline code spans blanked."""
    inside = {b.line + i for b in fenced_blocks(page) for i in range(len(b.lines) + 2)}
    return [
        (n, re.sub(r"(`+).+?\1", "", line))
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if n not in inside
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    inside = {b.line + i for b in fenced_blocks(page) for i in range(len(b.lines) + 2)}
    seen: dict[str, int] = {}
    out = set()
    for number, line in enumerate(page.read_text().splitlines(), 1):
        heading = re.match(r" {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and number not in inside:
            slug = _slug(heading.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(out)


def links() -> list[tuple[str, Path, str]]:
    out = []
    for page in PAGES:
        for number, line in _prose_lines(page):
            targets = re.findall(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)
            targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", line)
            out += [(f"{_rel(page)}:{number}", page, target) for target in targets]
    return out


@pytest.mark.parametrize("where, page, target", links(), ids=[w for w, _, _ in links()])
def test_relative_links_resolve(where: str, page: Path, target: str) -> None:
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
        return
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    expect(file.exists(), f"{where}: the link {target!r} points to {path}, which does not exist")
    if anchor and file.suffix == ".md":
        expect(
            anchor in anchors(file),
            f"{where}: {target!r}: {file.relative_to(ROOT)} has no heading whose anchor is #{anchor}",
        )
