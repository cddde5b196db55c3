"""Instruction data for supervised fine-tuning (Zhao et al. 2024, "LLaMA Beyond English", Sec. 3: instruction tuning
on BELLE / Alpaca-style data): reading, a held-out split, prompts, and response-only labels.

A conversation is a list of messages ``{"role": "system"|"user"|"assistant", "content": str}``. Rows are read from

* JSON lines (or a JSON array) with ``instruction`` [+ ``input``] + ``output`` (Alpaca, BELLE's training sets),
  ``question`` + ``std_answer`` (BELLE's ``eval_set.json``), ``instruction`` + ``instances`` (the Alpaca and BELLE
  seed tasks: one conversation per instance), ``messages`` (chat style) or ``conversations`` (ShareGPT style,
  ``from``/``value``); a ``lang`` (or ``language``) field gives the language, else the source's default;
* the names ``belle`` (BELLE eval set, rows with a reference answer), ``belle-seeds``, ``alpaca-seeds`` (read from
  the shared data folder at run time: both are non-commercial and never embedded) and ``embedded`` (our own pairs).

The user turn of an instruction with an input is ``instruction + "\\n\\n" + input``. A malformed row stops the run
with its file and line named.

Held-out split: a row is in the validation split when ``sha256(seed, its messages) / 2**256 < val_fraction``, so
the split depends on the row's content only (not on its position; re-ordering or extending the file keeps it).

Labels (the loss is on the response tokens only): the whole conversation is rendered with the template and encoded
**once** with character offsets; the response spans are character ranges of the rendered text (from rendering the
conversation up to each assistant turn with and without it), and a token is a target iff its characters overlap a
response span. A tokenizer that merges characters across the prompt/response boundary therefore cannot shift the
mask: the merged token holds response characters and is trained, every token after it is, none before it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babelscope.caches import unit_fraction
from babelscope.errors import BabelscopeError

IGNORE = -100  # label of a position without loss

#: Gemma's turn format (no system role: a system message is put in front of the first user turn), without BOS
#: (the tokenizer adds it). Used for tokenizers without a chat template that know ``<start_of_turn>``.
GEMMA_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\n\n' -%}"
    "{%- elif m['role'] == 'user' -%}{{ '<start_of_turn>user\n' + ns.system + m['content'] + '<end_of_turn>\n' }}"
    "{%- set ns.system = '' -%}"
    "{%- elif m['role'] == 'assistant' -%}{{ '<start_of_turn>model\n' + m['content'] + '<end_of_turn>\n' }}"
    "{%- else -%}{{ raise_exception('role ' + m['role'] + ' is not system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

#: The plain template (Alpaca's section headers), for tokenizers with neither a chat template nor turn tokens;
#: a response ends with the EOS token.
PLAIN_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] + '\n\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ '### Instruction:\n' + m['content'] + '\n\n### Response:\n' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ m['content'] + eos_token + '\n\n' }}"
    "{%- else -%}{{ raise_exception('role ' + m['role'] + ' is not system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

#: Names of instruction sets: shared data path (relative to the data folder) and default language.
NAMED = {
    "belle": ("bench/belle/eval_set.json", "cmn-Hans"),
    "belle-seeds": ("bench/belle/zh_seed_tasks.json", "cmn-Hans"),
    "alpaca-seeds": ("bench/alpaca/seed_tasks.jsonl", "eng"),
    "embedded": ("embedded/sft_instructions.jsonl", None),
}
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "model": "assistant", "bot": "assistant"}


@dataclass
class Conversation:
    """One training example: its messages, language (registry code), id and source (file:line)."""

    messages: list[dict[str, str]]
    lang: str
    id: str
    source: str

    @property
    def instruction(self) -> str:
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def reference(self) -> str:
        return [m["content"] for m in self.messages if m["role"] == "assistant"][-1]


# ----------------------------------------------------------------------------------------------- reading
def source_path(spec: str) -> tuple[Path, str | None]:
    """The file of an instruction set name or path, and the set's default language."""
    from babelscope.evaluate.benchmarks import data_path

    if spec in NAMED:
        rel, lang = NAMED[spec]
        path = data_path(rel)
        if not path.is_file():
            raise BabelscopeError(f"--data {spec}: {path} not found; set BABELSCOPE_DATA to the shared data folder")
        return path, lang
    path = Path(spec).expanduser()
    if not path.is_file():
        raise BabelscopeError(f"--data {spec}: no such file; give a JSONL/JSON file or one of {', '.join(NAMED)}")
    return path, None


def read_conversations(spec: str, lang: str | None = None) -> tuple[list[Conversation], int]:
    """Conversations from one or more comma-separated sets or files, and the number of rows skipped (BELLE eval
    rows without a reference answer). ``lang`` is the language of rows that have no ``lang`` field."""
    out: list[Conversation] = []
    skipped = 0
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        path, default = source_path(part)
        for line, row in _rows(path):
            convs = _parse_row(row, f"{path}:{line}", lang or default, skip_empty=part == "belle")
            skipped += convs is None
            out.extend(convs or [])
    if not out:
        raise BabelscopeError(f"--data {spec}: no instructions read")
    return out, skipped


def _rows(path: Path):
    """``(line, row)`` of a JSON-lines file or of a JSON array (line of each element's start)."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BabelscopeError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
        decoder, pos = json.JSONDecoder(), text.index("[") + 1
        for row in rows:  # recover each element's line for error messages
            while text[pos] in " \t\r\n,":
                pos += 1
            _, end = decoder.raw_decode(text, pos)
            yield text.count("\n", 0, pos) + 1, row
            pos = end
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as exc:
            raise BabelscopeError(f"{path}:{i}: not valid JSON ({exc.msg}); fix or remove the row") from None


def _text(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BabelscopeError(f"{where}: field {key!r} is {'missing' if value is None else type(value).__name__}, "
                              "not a string; fix or remove the row")
    return value


def _parse_row(row: Any, where: str, default_lang: str | None, skip_empty: bool = False
               ) -> list[Conversation] | None:
    """The conversations of one row (a seed task gives one per instance); ``None`` for a skipped row."""
    if not isinstance(row, dict):
        raise BabelscopeError(f"{where}: expected a JSON object, got {type(row).__name__}; fix or remove the row")
    lang = _language(row.get("lang") or row.get("language") or default_lang, where)
    rid = str(row.get("id", where.rsplit(":", 1)[-1]))
    if "messages" in row or "conversations" in row:
        turns = row.get("messages", row.get("conversations"))
        if not isinstance(turns, list) or not turns:
            raise BabelscopeError(f"{where}: 'messages' must be a non-empty list of {{role, content}}; fix the row")
        messages = []
        for j, m in enumerate(turns, 1):
            if not isinstance(m, dict):
                raise BabelscopeError(f"{where}: message {j} is not an object; fix the row")
            role = ROLES.get(str(m.get("role", m.get("from", ""))).lower())
            content = m.get("content", m.get("value"))
            if role is None or not isinstance(content, str):
                raise BabelscopeError(f"{where}: message {j} needs a role (system/user/assistant) and a string "
                                      "'content'; fix the row")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise BabelscopeError(f"{where}: no assistant message with content (nothing to train on); fix the row")
        if not any(m["role"] == "user" for m in messages):
            raise BabelscopeError(f"{where}: no user message; fix the row")
        return [Conversation(messages, lang, rid, where)]
    if "instances" in row:
        instruction = _text(row, "instruction", where)
        if not isinstance(row["instances"], list) or not row["instances"]:
            raise BabelscopeError(f"{where}: 'instances' must be a non-empty list of {{input, output}}; fix the row")
        out = []
        for j, inst in enumerate(row["instances"]):
            if not isinstance(inst, dict):
                raise BabelscopeError(f"{where}: instance {j + 1} is not an object; fix the row")
            out.append(_pair(instruction, _text(inst, "input", where, False), _text(inst, "output", where), lang,
                             f"{rid}.{j}", where))
        return out
    if "question" in row and "instruction" not in row:
        answer = _text(row, "std_answer", where, required=not skip_empty)
        if skip_empty and not answer.strip():
            return None
        return [_pair(_text(row, "question", where), "", answer, lang, rid, where)]
    if "instruction" not in row:
        raise BabelscopeError(f"{where}: no 'instruction' (with 'output'), 'question' (with 'std_answer'), "
                              "'instances' or 'messages'; fix or remove the row")
    return [_pair(_text(row, "instruction", where), _text(row, "input", where, False), _text(row, "output", where),
                  lang, rid, where)]


def _pair(instruction: str, input_: str, output: str, lang: str, rid: str, where: str) -> Conversation:
    if not instruction.strip():
        raise BabelscopeError(f"{where}: empty instruction; fix or remove the row")
    if not output.strip():
        raise BabelscopeError(f"{where}: empty output (nothing to train on); fix or remove the row")
    user = instruction.strip() + ("\n\n" + input_.strip() if input_.strip() else "")
    return Conversation([{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}],
                        lang, rid, where)


def _language(lang: Any, where: str) -> str:
    from babelscope.data.languages import resolve_language

    if not lang:
        raise BabelscopeError(f"{where}: no 'lang' field; add one or pass --lang")
    try:
        return resolve_language(str(lang)).code
    except BabelscopeError:
        raise BabelscopeError(f"{where}: unknown language {lang!r}; use a code like zh, cmn-Hans or eng") from None


# ----------------------------------------------------------------------------------------------- split
def row_hash(conv: Conversation, seed: int) -> float:
    """A number in [0, 1) from the seed and the conversation's messages (its content, not its position)."""
    return unit_fraction(json.dumps([seed, conv.messages], ensure_ascii=False, sort_keys=True))


def split(convs: list[Conversation], val_fraction: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """``(train, validation)``: a conversation is held out when its :func:`row_hash` is below ``val_fraction``."""
    val = [c for c in convs if row_hash(c, seed) < val_fraction]
    held = {id(c) for c in val}
    return [c for c in convs if id(c) not in held], val


# ----------------------------------------------------------------------------------------------- templates
def _single_token(tokenizer, text: str) -> bool:
    ids = tokenizer.convert_tokens_to_ids(text)
    return isinstance(ids, int) and ids != tokenizer.unk_token_id and ids is not None


def choose_template(tokenizer, template: str = "auto") -> tuple[str, str]:
    """``(name, jinja template)``: ``auto`` is the tokenizer's chat template when it has one, else Gemma's turn
    format when ``<start_of_turn>``/``<end_of_turn>`` are single tokens, else the plain template; ``chat``,
    ``gemma``, ``plain`` ask for one; any other value is a path to a Jinja file."""
    own = getattr(tokenizer, "chat_template", None)
    turns = _single_token(tokenizer, "<start_of_turn>") and _single_token(tokenizer, "<end_of_turn>")
    if template == "auto":
        template = "chat" if own else "gemma" if turns else "plain"
    if template == "chat":
        if not own or not isinstance(own, str):
            raise BabelscopeError("--template chat: this tokenizer has no (single) chat template; use --template "
                                  "auto, gemma, plain or a .jinja file")
        return "chat", own
    if template == "gemma":
        if not turns:
            raise BabelscopeError("--template gemma: the tokenizer has no <start_of_turn>/<end_of_turn> tokens; "
                                  "use --template plain (or auto)")
        return "gemma", GEMMA_TEMPLATE
    if template == "plain":
        if tokenizer.eos_token is None:
            raise BabelscopeError("--template plain: the tokenizer has no EOS token to end a response; give a "
                                  "--template .jinja file")
        return "plain", PLAIN_TEMPLATE
    path = Path(template).expanduser()
    if not path.is_file():
        raise BabelscopeError(f"--template {template}: use auto, chat, gemma, plain or the path of a Jinja file")
    return str(path), path.read_text(encoding="utf-8")


def end_token_id(tokenizer, name: str) -> int | None:
    """The token that ends a response in template ``name`` (``<end_of_turn>`` for gemma, EOS otherwise)."""
    if name == "gemma":
        return tokenizer.convert_tokens_to_ids("<end_of_turn>")
    return tokenizer.eos_token_id


def _render(tokenizer, template: str, messages: list[dict[str, str]], generation: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation)
    except Exception as exc:  # jinja2 errors: raise_exception(...), undefined names, role checks
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BabelscopeError(f"{where}: the template does not fit this conversation ({msg}); use another "
                              "--template") from None


def response_spans(tokenizer, template: str, messages: list[dict[str, str]], where: str
                   ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn (content plus the template's
    end-of-turn marker, without trailing whitespace). The template must render each conversation prefix as a
    prefix of the whole, and keep each response's text: otherwise it does not fit (one-line error)."""
    full = _render(tokenizer, template, messages, False, where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, template, messages[:i], True, where) if i else ""
        upto = _render(tokenizer, template, messages[: i + 1], False, where)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise BabelscopeError(f"{where}: the template does not fit: the conversation up to turn {i + 1} does not "
                                  "render as a prefix of the whole (it rewrites earlier turns); use another --template")
        body = upto[len(before):]
        if m["content"].strip() and m["content"].strip() not in body:
            raise BabelscopeError(f"{where}: the template does not fit: it drops or rewrites the response of turn "
                                  f"{i + 1}; use another --template")
        end = len(before) + len(body.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


@dataclass
class Encoded:
    """Token ids with labels aligned to them (``IGNORE`` = no loss; the model shifts them)."""

    input_ids: list[int]
    labels: list[int]
    targets: int  # number of trained tokens
    truncated: bool = False  # part of a response was cut by --max-length
    conversation: Conversation | None = field(default=None, repr=False)


def encode(tokenizer, template: str, conv: Conversation, max_length: int | None = None) -> Encoded:
    """Encode ``conv`` once with offsets and label the tokens that overlap a response span; cut at ``max_length``
    tokens (``targets == 0`` then means the response was cut away entirely)."""
    text, spans = response_spans(tokenizer, template, conv.messages, conv.source)
    bos = tokenizer.bos_token
    special = not (bos and text.startswith(bos))  # a template that writes BOS itself
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except NotImplementedError:
        raise BabelscopeError("the tokenizer gives no character offsets (a slow tokenizer); use a fast one "
                              "(tokenizer.json)") from None
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [tok if end > start and any(start < e and end > s for s, e in spans) else IGNORE
              for tok, (start, end) in zip(ids, offsets, strict=True)]
    full_targets = sum(x != IGNORE for x in labels)
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    targets = sum(x != IGNORE for x in labels)
    return Encoded(ids, labels, targets, truncated=targets < full_targets, conversation=conv)


def encode_all(tokenizer, template: str, convs: list[Conversation], max_length: int | None
               ) -> tuple[list[Encoded], dict[str, int]]:
    """Encoded conversations that keep at least one target token, and the counts: ``encoded``, ``truncated``
    (a response partly cut), ``cut_away`` (a response cut away entirely: dropped, never trained on as an empty
    target), ``target_tokens``, ``tokens``."""
    kept, partial, cut = [], 0, 0
    for conv in convs:
        e = encode(tokenizer, template, conv, max_length)
        if e.targets == 0:
            cut += 1
            continue
        partial += e.truncated
        kept.append(e)
    counts = {"encoded": len(kept), "truncated": partial, "cut_away": cut,
              "target_tokens": sum(e.targets for e in kept), "tokens": sum(len(e.input_ids) for e in kept)}
    return kept, counts
