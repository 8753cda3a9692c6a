"""Prompt sets: JSONL/CSV files, Hugging Face datasets, the built-in starter set, attack templates.

A row needs a `prompt` (or a `template` with a `placeholder`, for attack templates) and may carry
`id`, `label`, `category`, `attack_class`, `goal`; other fields are kept in `meta`.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from ..errors import HarcError

STARTER_SETS = ("harmful", "harmless", "borderline", "attacks", "paper_attacks")
_KNOWN = ("id", "prompt", "label", "category", "attack_class", "goal")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    label: str | None = None
    category: str | None = None
    attack_class: str | None = None
    goal: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def field(self, name: str):
        """A known field by name, or a value from the row's extra columns (`meta`)."""
        return getattr(self, name) if name in _KNOWN else self.meta.get(name)


def _python_words(name: str, words: Sequence[str]) -> str:
    return "\n".join(f"    {name}.append({json.dumps(w)})" for w in words)


# How a template may encode the request before it replaces the placeholder (CodeAttack's code
# encodings): the request's words as Python list appends, pushed onto a stack in reverse (popping gives
# them in order), or one Python string literal. json.dumps gives a valid Python literal for any text.
GOAL_ENCODINGS = {
    "python_list": lambda r: _python_words("my_list", r.split()),
    "python_stack": lambda r: _python_words("my_stack", r.split()[::-1]),
    "python_string": lambda r: f"    my_string = {json.dumps(r)}",
}


@dataclass(frozen=True)
class AttackTemplate:
    id: str
    template: str
    attack_class: str
    placeholder: str = "[INSERT PROMPT HERE]"
    method: str | None = None
    encoding: str | None = None  # a GOAL_ENCODINGS key: the request is encoded before it is inserted

    def __post_init__(self):
        if self.encoding is not None and self.encoding not in GOAL_ENCODINGS:
            raise HarcError(
                f"attack template '{self.id}': unknown encoding {self.encoding!r}; known: {sorted(GOAL_ENCODINGS)}"
            )

    def fill(self, request: str) -> str:
        """The attack prompt with `request` (encoded first, with an `encoding`) in place of the placeholder."""
        text = request if self.encoding is None else GOAL_ENCODINGS[self.encoding](request)
        return self.template.replace(self.placeholder, text)


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]
    templates: tuple[AttackTemplate, ...] = ()

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    @property
    def texts(self) -> list[str]:
        """The prompt texts, in order."""
        return [p.prompt for p in self.prompts]

    @property
    def ids(self) -> list[str]:
        """The prompt ids, in order."""
        return [p.id for p in self.prompts]

    def where(self, **fields) -> PromptSet:
        """Keep prompts whose fields (or `meta` entries) equal the given values, e.g. `where(label="harmful")`."""
        keep = tuple(p for p in self.prompts if all(p.field(k) == v for k, v in fields.items()))
        return PromptSet(self.name, keep, self.templates)

    def exclude(self, **fields) -> PromptSet:
        """Drop prompts whose fields (or `meta` entries) equal any of the given values."""
        keep = tuple(p for p in self.prompts if not any(p.field(k) == v for k, v in fields.items()))
        return PromptSet(self.name, keep, self.templates)

    def attack_classes(self, classes: Iterable[str]) -> PromptSet:
        """Keep the attack prompts and templates of these classes; prompts with no class stay."""
        wanted = set(classes)
        known = {p.attack_class for p in self.prompts} | {t.attack_class for t in self.templates}
        if unknown := wanted - known:
            raise HarcError(
                f"no attack class {sorted(unknown)} in '{self.name}'; it has {sorted(known - {None})}"
            )
        keep = tuple(p for p in self.prompts if not p.attack_class or p.attack_class in wanted)
        return PromptSet(self.name, keep, tuple(t for t in self.templates if t.attack_class in wanted))

    def with_label(self, label: str) -> PromptSet:
        """The same prompts, every one labelled `label`."""
        return PromptSet(self.name, tuple(replace(p, label=label) for p in self.prompts), self.templates)

    def sample(self, n: int | None, seed: int = 0) -> PromptSet:
        """A deterministic random subset of n prompts (all of them, shuffled, if n is None)."""
        idx = list(range(len(self.prompts)))
        random.Random(seed).shuffle(idx)
        idx = idx if n is None else sorted(idx[:n])
        return PromptSet(self.name, tuple(self.prompts[i] for i in idx), self.templates)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[PromptSet, PromptSet]:
        """Deterministic (train, test) split; the same seed always gives the same split."""
        if not 0 < test_fraction < 1:
            raise HarcError(f"test_fraction must be in (0, 1), got {test_fraction}")
        idx = list(range(len(self.prompts)))
        random.Random(seed).shuffle(idx)
        n_test = round(test_fraction * len(idx))
        test, train = sorted(idx[:n_test]), sorted(idx[n_test:])
        pick = lambda ii: tuple(self.prompts[i] for i in ii)  # noqa: E731
        return PromptSet(self.name, pick(train)), PromptSet(self.name, pick(test))

    def __add__(self, other: PromptSet) -> PromptSet:
        """Both sets' prompts; an id in both is an error (ids must name one prompt across files)."""
        twice = sorted(set(self.ids) & set(other.ids)) + sorted(
            {t.id for t in self.templates} & {t.id for t in other.templates}
        )
        if twice:
            raise HarcError(
                f"prompt ids {twice[:5]} occur in both '{self.name}' and '{other.name}': give each file's "
                "rows distinct ids"
            )
        return PromptSet(
            f"{self.name}+{other.name}", self.prompts + other.prompts, self.templates + other.templates
        )


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped), or an error that names the file."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HarcError(
            f"{path} is not UTF-8 text (invalid byte at offset {e.start}): re-save it as UTF-8"
        ) from None
    except OSError as e:
        raise HarcError(f"cannot read prompt file {path}: {e.strerror}") from None


def _rows_from_file(path: Path) -> Iterable[tuple[str, dict]]:
    text = _read_text(path)
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise HarcError(f"{path}:{n} is not valid JSON: {e}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            lines = [line for line in text.split("\n") if line.strip()]
            if len(lines) > 1 and _all_json(lines):
                raise HarcError(
                    f"{path} holds JSON lines (one object per line): rename it to .jsonl"
                ) from None
            raise HarcError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise HarcError(f"{path} must hold a JSON list of objects")
        for n, row in enumerate(data):
            yield f"{path}[{n}]", row
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        if not {"prompt", "template"} & set(header):
            raise HarcError(
                f"{path}: the CSV header {header} has no 'prompt' column; the first line must name the "
                "columns (e.g. id,prompt,label)"
            )
        for n, row in enumerate(reader, 2):
            yield f"{path}:{n}", row
    else:
        raise HarcError(f"{path}: unsupported prompt file type (use .jsonl, .json or .csv)")


def _all_json(lines: list[str]) -> bool:
    try:
        return all(isinstance(json.loads(line), dict) for line in lines)
    except json.JSONDecodeError:
        return False


def prompts_from_rows(name: str, rows: Iterable[tuple[str, dict]], label: str | None = None) -> PromptSet:
    """A `PromptSet` from (where, row) pairs: prompts and attack templates, ids unique, errors naming the
    row."""
    prompts: list[Prompt] = []
    templates: list[AttackTemplate] = []
    seen: set[str] = set()
    for where, row in rows:
        if not isinstance(row, dict):
            raise HarcError(f"{where}: expected an object, got {type(row).__name__}")
        rid = str(row.get("id") or f"{name}-{len(prompts) + len(templates)}")
        if rid in seen:
            raise HarcError(f"{where}: duplicate id '{rid}'")
        seen.add(rid)
        if row.get("template"):
            placeholder = row.get("placeholder") or "[INSERT PROMPT HERE]"
            if row["template"].count(placeholder) != 1:
                raise HarcError(f"{where}: template must contain the placeholder {placeholder!r} once")
            cls = row.get("attack_class") or "template"
            try:
                templates.append(
                    AttackTemplate(
                        rid, row["template"], cls, placeholder, row.get("method"), row.get("encoding")
                    )
                )
            except HarcError as e:
                raise HarcError(f"{where}: {e}") from None
            continue
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise HarcError(f"{where}: missing or empty 'prompt' field")
        known = {k: row.get(k) for k in _KNOWN[2:]}
        if label is not None:
            known["label"] = label
        meta = {k: v for k, v in row.items() if k not in _KNOWN}
        prompts.append(Prompt(rid, text.strip(), **known, meta=meta))
    if not prompts and not templates:
        raise HarcError(f"prompt set '{name}' is empty")
    return PromptSet(name, tuple(prompts), tuple(templates))


def starter_prompts(kind: str) -> PromptSet:
    """The small built-in prompt sets written for harc_interp (see data/starter/README.md)."""
    if kind not in STARTER_SETS:
        raise HarcError(f"unknown starter set '{kind}'; choose one of {STARTER_SETS}")
    path = resources.files("harc_interp") / "data" / "starter" / f"{kind}.jsonl"
    with resources.as_file(path) as p:
        return prompts_from_rows(f"starter:{kind}", _rows_from_file(Path(p)))


# Row labels on either side of the safe/unsafe line; any other label (None, a category) is neutral.
SAFE_LABELS = frozenset({"safe", "harmless", "benign", "borderline"})
UNSAFE_LABELS = frozenset({"unsafe", "harmful", "jailbreak"})


def as_role(ps: PromptSet, role: str) -> tuple[PromptSet, tuple[str, ...]]:
    """`ps` labelled `role` ('harmful', or 'harmless'/'safe'), and the ids of the rows left out because
    their own label says the opposite. A file of matched pairs (JBB's over-refusal rows: a safe and an
    unsafe prompt per behaviour) passed as safe prompts must not count its unsafe half as safe."""
    opposite = UNSAFE_LABELS if role in SAFE_LABELS else SAFE_LABELS if role in UNSAFE_LABELS else None
    if opposite is None:
        raise HarcError(
            f"unknown prompt role {role!r}: expected one of {sorted(SAFE_LABELS | UNSAFE_LABELS)}"
        )
    contradicts = [(p.label or "").lower() in opposite for p in ps.prompts]
    kept = tuple(p for p, bad in zip(ps.prompts, contradicts, strict=True) if not bad)
    dropped = tuple(p.id for p, bad in zip(ps.prompts, contradicts, strict=True) if bad)
    return PromptSet(ps.name, kept, ps.templates).with_label(role), dropped


def load_prompts(source: str | Path, *, label: str | None = None, limit: int | None = None) -> PromptSet:
    """Load a prompt set from a file, `starter:KIND`, or `hf:DATASET[:SPLIT[:COLUMN]]` (online).

    `label` overrides every row's label (e.g. to mark a file of plain requests as harmful).
    """
    source = str(source)
    if source.startswith("starter:"):
        ps = starter_prompts(source.split(":", 1)[1])
    elif source.startswith("hf:"):
        ps = _load_hf(source[3:])
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise HarcError(f"prompt file {path} does not exist")
        ps = prompts_from_rows(path.stem, _rows_from_file(path))
    if label is not None:
        ps = ps.with_label(label)
    if limit is not None:
        ps = PromptSet(ps.name, ps.prompts[:limit], ps.templates)
    return ps


def _load_hf(spec: str) -> PromptSet:
    name, split, column = (spec.split(":") + ["train", "prompt"])[:3]
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise HarcError(
            f"could not load Hugging Face dataset '{name}' (split '{split}'): {e}. Offline, export it "
            "to JSONL with a 'prompt' field and pass the file instead"
        ) from e
    if column not in ds.column_names:
        raise HarcError(f"dataset '{name}' has no column '{column}'; columns: {ds.column_names}")
    rows = ((f"{name}[{i}]", {**r, "prompt": r[column]}) for i, r in enumerate(ds))
    return prompts_from_rows(name, rows)


def expand_attacks(templates: Sequence[AttackTemplate], goals: Sequence[Prompt]) -> PromptSet:
    """Every template filled with every goal: one prompt per (template, goal), labelled 'jailbreak'."""
    if not templates:
        raise HarcError("no attack templates to expand")
    out = [
        Prompt(
            f"{t.id}::{g.id}",
            t.fill(g.prompt),
            label="jailbreak",
            category=g.category,
            attack_class=t.attack_class,
            goal=g.prompt,
            meta={"template_id": t.id, "goal_id": g.id},
        )
        for t in templates
        for g in goals
    ]
    return PromptSet("attacks", tuple(out))


@dataclass(frozen=True)
class SplitConfig:
    """How `safety_splits` divides the safety prompt sets into training and evaluation rows."""

    eval_fraction: float = 0.5  # share of each plain set (and of each class's full prompts) held out
    max_per_class: int = 16  # cap on each attack class, both sides
    templates_per_class: int = 2  # attack templates per class, filled with each side's own goals
    seed: int = 0
    # Cap on each held-out plain set (harmful, harmless, borderline; None: all of them): a large prompt
    # file's held-out half is thousands of answers per evaluation on a CPU. Training rows are not capped.
    max_eval: int | None = None

    def __post_init__(self):
        if not 0 < self.eval_fraction < 1:
            raise HarcError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_per_class < 1 or self.templates_per_class < 1:
            raise HarcError("max_per_class and templates_per_class must be at least 1")
        if self.max_eval is not None and self.max_eval < 1:
            raise HarcError(f"max_eval must be at least 1 (or None: no cap), got {self.max_eval}")


def safety_splits(
    harmful: PromptSet,
    harmless: PromptSet,
    borderline: PromptSet,
    jailbreaks: PromptSet,
    *,
    eval_fraction: float = 0.5,
    max_per_class: int = 16,
    templates_per_class: int = 2,
    seed: int = 0,
    max_eval: int | None = None,
) -> tuple[dict[str, PromptSet], dict[str, PromptSet]]:
    """Deterministic (train, eval) prompt sets for training and judging a safety intervention.

    Plain sets are split by `eval_fraction`, and their held-out sides capped at `max_eval` prompts (None:
    all; the attacks' held-out goals are then the capped harmful prompts). Attack templates (up to
    `templates_per_class` per class) are filled with training goals for training and with held-out goals
    for evaluation, so no goal is shared; full jailbreak prompts are split per class. Every class is
    capped at `max_per_class`.
    """
    h_tr, h_ev = harmful.split(eval_fraction, seed)
    b_tr, b_ev = harmless.split(eval_fraction, seed)
    o_tr, o_ev = borderline.split(eval_fraction, seed)
    by_class: dict[str, list[AttackTemplate]] = {}
    for t in jailbreaks.templates:
        by_class.setdefault(t.attack_class, []).append(t)
    rng = random.Random(seed)
    chosen = [t for ts in by_class.values() for t in rng.sample(ts, min(templates_per_class, len(ts)))]

    def attacks(goals: PromptSet, full: tuple[Prompt, ...]) -> PromptSet:
        rows: dict[str, list[Prompt]] = {}
        if chosen:
            for p in expand_attacks(chosen, goals.sample(None, seed=seed).prompts).prompts:
                rows.setdefault(p.attack_class, []).append(p)
        for p in full:
            rows.setdefault(p.attack_class or "unknown", []).append(p)
        capped = [
            p for ps in rows.values() for p in random.Random(seed).sample(ps, min(max_per_class, len(ps)))
        ]
        return PromptSet("jailbreaks", tuple(capped))

    full_tr, full_ev = (
        PromptSet("full", jailbreaks.prompts).split(eval_fraction, seed)
        if jailbreaks.prompts
        else (PromptSet("full", ()), PromptSet("full", ()))
    )
    train = {
        "harmful": h_tr,
        "harmless": b_tr,
        "borderline": o_tr,
        "jailbreak": attacks(h_tr, full_tr.prompts),
    }
    if max_eval is not None:  # the attacks' held-out goals are then the capped harmful set's
        h_ev, b_ev, o_ev = (ps.sample(max_eval, seed) for ps in (h_ev, b_ev, o_ev))
    evaluation = {
        "harmful": h_ev,
        "harmless": b_ev,
        "borderline": o_ev,
        "jailbreaks": attacks(h_ev, full_ev.prompts),
    }
    return train, evaluation
