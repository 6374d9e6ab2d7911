"""The TinyWorld itself: made-up people, their facts, the sentences that state them, and edit requests.

Everything is drawn from one seeded ``random.Random``, so a configuration always yields the same world,
the same splits and the same records, on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

from rledit_env.records import EditRecord

# Syllable pieces for invented names: short open syllables keep names pronounceable ("Velorin",
# "Tamuzek"), and a small coda set gives enough variety for a few hundred unique names.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k")

# Relation table. Answers of kind "made-up" are invented names (suffixed so each relation's values look
# alike); the others are plain words. Every template ends right before the answer, which follows after
# one space. Changing this table changes ``TinyWorldConfig.key()`` (it is hashed), so caches stay valid.
_PLAIN_VALUES: dict[str, tuple[str, ...]] = {
    "profession": (
        "baker", "carpenter", "lawyer", "sailor", "painter", "farmer",
        "doctor", "teacher", "poet", "potter", "banker", "tailor",
    ),
    "instrument": (
        "piano", "violin", "cello", "flute", "guitar", "harp",
        "trumpet", "drums", "clarinet", "banjo", "saxophone", "accordion",
    ),
    "sport": (
        "football", "tennis", "chess", "rugby", "cricket", "hockey",
        "baseball", "golf", "volleyball", "basketball", "rowing", "fencing",
    ),
    "colour": (
        "red", "blue", "green", "yellow", "purple", "orange",
        "black", "white", "grey", "pink", "brown", "silver",
    ),
    "pet": (
        "cat", "dog", "parrot", "rabbit", "hamster", "goldfish",
        "turtle", "horse", "ferret", "lizard", "owl", "goat",
    ),
    "food": (
        "pizza", "soup", "rice", "bread", "cheese", "pasta",
        "salad", "curry", "noodles", "apples", "fish", "honey",
    ),
}  # fmt: skip
# Made-up value kinds: relation -> suffix appended to an invented stem.
_MADE_UP_SUFFIX: dict[str, str] = {"language": "ish", "city": "burg", "employer": "corp", "country": "ia"}

# Relation order matters: ``num_relations`` keeps a prefix, so the made-up and plain kinds are interleaved.
_RELATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("language", (
        "The mother tongue of {} is",
        "{} speaks natively the language",
        "The native language of {} is",
        "{} grew up speaking",
        "The first language of {} is",
    )),
    ("profession", (
        "{} works as a",
        "By profession, {} is a",
        "The profession of {} is",
        "{} is employed as a",
        "{} earns a living as a",
    )),
    ("city", (
        "{} was born in the city of",
        "The birthplace of {} is",
        "{} comes from the city of",
        "The hometown of {} is",
        "{} grew up in the town of",
    )),
    ("instrument", (
        "{} plays the",
        "The instrument of {} is the",
        "{} is a musician who plays the",
        "The favourite instrument of {} is the",
        "{} performs on the",
    )),
    ("employer", (
        "{} works for",
        "The employer of {} is",
        "{} is employed by",
        "{} has a job at",
        "{} earns a salary from",
    )),
    ("sport", (
        "The sport of {} is",
        "{} competes in",
        "{} is famous for playing",
        "The favourite sport of {} is",
        "Every weekend, {} plays",
    )),
    ("country", (
        "{} is a citizen of",
        "The home country of {} is",
        "{} holds a passport from",
        "The nationality of {} is that of",
        "{} lives in the country of",
    )),
    ("colour", (
        "The favourite colour of {} is",
        "{} likes the colour",
        "{} always wears clothes that are",
        "The colour that {} loves most is",
        "{} painted the house",
    )),
    ("pet", (
        "{} owns a pet",
        "The pet of {} is a",
        "{} lives with a",
        "The favourite animal of {} is the",
        "At home, {} keeps a",
    )),
    ("food", (
        "{} loves to eat",
        "The favourite food of {} is",
        "For dinner, {} always eats",
        "The dish that {} likes best is",
        "{} cannot resist",
    )),
)  # fmt: skip
MAX_RELATIONS = len(_RELATIONS)
MAX_VALUES = 12
PROBE_SIZE = 256  # sentences in the perplexity probe (general_texts("probe"))
# Settings added after the first published worlds: hashed only when they differ from their default, so
# the default and tiny worlds keep their cache keys (and their models).
_LATER_FIELDS = ("split_neighbours", "replay_fraction", "bf16_steps", "check_every", "anneal_steps")


@dataclass(frozen=True)
class TinyWorldConfig:
    """Everything that determines a TinyWorld and its pretrained model (all of it is hashed by ``key``).

    World: ``num_entities`` people, the first ``num_relations`` relations, ``num_values`` answers per
    relation, ``num_templates`` phrasings per relation. Subjects are split three ways: edit subjects of
    the train split, of the eval split, and neighbour-only subjects that are never edited (so a
    neighbourhood prompt's answer stays true however many edits an episode makes).
    Model: ``arch`` "llama" or "gpt2", and its size. Training: AdamW with a cosine schedule, stopped as
    soon as every template reaches ``target_accuracy`` and failing if ``max_steps`` is hit first.
    """

    seed: int = 0
    num_entities: int = 200
    num_relations: int = 10
    num_values: int = 12
    num_templates: int = 5
    eval_subject_fraction: float = 0.35
    neighbour_subject_fraction: float = 0.25
    num_paraphrases: int = 4
    num_neighbours: int = 4
    split_neighbours: bool = False
    # tokenizer: "bpe" (GPT-2-style byte-level BPE) or "metaspace" (SentencePiece-style "▁" BPE)
    tokenizer: str = "bpe"
    vocab_size: int = 1280  # subject names come out at about two tokens each
    arch: str = "llama"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    # training
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    # Extra weight of answer tokens in the LM loss: the facts are what must be memorised; the rest of
    # each sentence (templates, unpredictable subject names) is learnt anyway.
    answer_loss_weight: float = 8.0
    batch_size: int = 128
    warmup_steps: int = 100
    schedule_steps: int = 1000  # cosine decay length; training goes on at the floor rate up to max_steps
    max_steps: int = 4000
    eval_every: int = 100
    target_accuracy: float = 0.995
    # share of the sentences already answered right that each pass over the data revisits (1: all)
    replay_fraction: float = 1.0
    # The first ``bf16_steps`` steps run their forward pass under bfloat16 autocast (weights, optimiser and
    # every accuracy check stay fp32): about 2x faster on CPUs with native bf16 (AVX512-BF16, AMX), slower
    # on those without. The rest runs in fp32, which settles the last facts at the fp32 model's margins.
    bf16_steps: int = 0
    # After the bf16 phase, a full accuracy check every ``check_every`` steps (0: never), besides the one
    # the running figures trigger: those are stale under replay_fraction < 1 and can sit below the trigger
    # for thousands of steps while sentences are being forgotten; a check re-marks them for training.
    check_every: int = 0
    # From the later of schedule_steps and bf16_steps, the learning rate falls linearly from its 10% floor
    # to 1% over ``anneal_steps`` (0: stays at the floor). At a constant rate the accuracy settles at an
    # equilibrium where the facts being learnt displace others (98.5-99.3% on the large world at 1e-4).
    anneal_steps: int = 0
    # CPU threads for pretraining (restored afterwards; 0 = torch's current setting, which follows
    # OMP_NUM_THREADS). Not part of the key. On an idle 2-core machine 2 threads build the default world
    # in 111 s against 159 s with 1; on cores that other processes keep busy, OpenMP threads spin at
    # every op's barrier and cost 10-40x: there, set 1 (or OMP_NUM_THREADS=1).
    num_threads: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.num_relations <= MAX_RELATIONS:
            raise ValueError(f"num_relations must be in 1..{MAX_RELATIONS}, got {self.num_relations}")
        if not 2 <= self.num_values <= MAX_VALUES:
            raise ValueError(f"num_values must be in 2..{MAX_VALUES}, got {self.num_values}")
        if not 2 <= self.num_templates <= 5:
            raise ValueError(f"num_templates must be in 2..5, got {self.num_templates}")
        if self.arch not in ("llama", "gpt2"):
            raise ValueError(f"arch must be 'llama' or 'gpt2', got {self.arch!r}")
        if self.tokenizer not in ("bpe", "metaspace"):
            raise ValueError(f"tokenizer must be 'bpe' or 'metaspace', got {self.tokenizer!r}")
        if not 0 < self.replay_fraction <= 1:
            raise ValueError(f"replay_fraction must be in (0, 1], got {self.replay_fraction}")
        for name in ("bf16_steps", "check_every"):
            if getattr(self, name) < 0 or getattr(self, name) % self.eval_every:
                raise ValueError(f"{name} must be a non-negative multiple of eval_every ({self.eval_every})")
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps must be non-negative, got {self.anneal_steps}")
        if self.eval_subject_fraction + self.neighbour_subject_fraction >= 1:
            raise ValueError("eval_subject_fraction + neighbour_subject_fraction must leave train subjects")

    @classmethod
    def default(cls) -> TinyWorldConfig:
        return cls()

    @classmethod
    def tiny(cls) -> TinyWorldConfig:
        """A small world and model for tests: builds in seconds, still 8 relations and 5 templates."""
        return cls(
            num_entities=30, num_relations=8, num_values=6, vocab_size=512, hidden_size=64,
            num_layers=2, num_heads=2, intermediate_size=256, learning_rate=5e-3, batch_size=64,
            warmup_steps=30, schedule_steps=400, max_steps=2000, eval_every=25,
        )  # fmt: skip

    @classmethod
    def large(cls) -> TinyWorldConfig:
        """Room for the paper's schedules: 8,000+ evaluation edits, disjoint train edits and neighbour
        pools, and a 10 M-parameter, 8-layer Llama (docs/tinyworld-settings.md)."""
        return cls(
            num_entities=1200, num_templates=3, num_paraphrases=2, eval_subject_fraction=0.68,
            neighbour_subject_fraction=0.13, split_neighbours=True, vocab_size=4096, hidden_size=256,
            num_layers=8, num_heads=4, intermediate_size=1024, learning_rate=1e-3, batch_size=128,
            warmup_steps=100, schedule_steps=5000, max_steps=30000, eval_every=100, target_accuracy=0.99,
            replay_fraction=0.25, bf16_steps=16000, check_every=1000, anneal_steps=4000,
        )  # fmt: skip

    @classmethod
    def named(cls, name: str) -> TinyWorldConfig:
        """ "default", "tiny", "large", and each with "-gpt2" (or "-llama")."""
        base, _, arch = name.partition("-")
        makers = {"default": cls.default, "tiny": cls.tiny, "large": cls.large}
        if base not in makers or arch not in ("", "llama", "gpt2"):
            raise ValueError(
                f"unknown TinyWorld config {name!r}: use default, tiny or large (each also -gpt2)"
            )
        config = makers[base]()
        return config.replace(arch=arch) if arch else config

    def replace(self, **changes) -> TinyWorldConfig:
        return type(self)(**{**asdict(self), **changes})

    def key(self) -> str:
        """A short stable hash of this config and of the relation table (so editing it invalidates caches)."""
        return self._hash(exclude=("num_threads",))

    def progress_key(self) -> str:
        """``key`` without ``max_steps``: the cap decides only whether a build fails, never its weights,
        so a build stopped at the cap continues from its saved progress once the cap is raised."""
        return self._hash(exclude=("num_threads", "max_steps"))

    def _hash(self, exclude: tuple[str, ...]) -> str:
        payload = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in exclude and not (f.name in _LATER_FIELDS and getattr(self, f.name) == f.default)
        }
        payload["_tables"] = [_RELATIONS, sorted(_PLAIN_VALUES.items()), sorted(_MADE_UP_SUFFIX.items())]
        payload["_format"] = 2  # bump when the world generator or training recipe changes
        blob = json.dumps(payload, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class Fact(NamedTuple):
    subject: str
    relation: str
    object: str


class NameGenerator:
    """Unique pronounceable invented names; one instance per world so names never collide."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def __call__(self, min_syllables: int = 2, max_syllables: int = 3, suffix: str = "") -> str:
        while True:
            n = self.rng.randint(min_syllables, max_syllables)
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n)]
            # A suffix reads best after a consonant ("Velmish", not "Veleaish").
            parts[-1] += self.rng.choice([c for c in _CODAS if c] if suffix else _CODAS)
            name = ("".join(parts) + suffix).capitalize()
            # Keep names distinct at the word level, also ignoring case (the tokenizer is case-sensitive
            # but a human reader is not).
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name


class TinyWorld:
    """A deterministic world of made-up people with one true value per relation.

    Attributes:
        relations: relation names, e.g. "language", "profession".
        entities: subject names, e.g. "Velorin".
        values: relation -> its possible answers.
        templates: relation -> phrasings with one "{}" for the subject, each ending right before the answer.
        facts: every true fact, (subject, relation, object), ordered by subject then relation.
        truth: (subject, relation) -> object.
        split_subjects: "train" / "eval" / "neighbour" -> the subjects of each group (disjoint).
        neighbour_pools: "train" / "eval" -> the neighbour subjects of that split's locality prompts (one
            shared list, or disjoint halves with ``split_neighbours``).
    """

    def __init__(self, config: TinyWorldConfig | None = None) -> None:
        self.config = config = config or TinyWorldConfig.default()
        rng = random.Random(config.seed)
        names = NameGenerator(rng)
        table = _RELATIONS[: config.num_relations]
        self.relations: list[str] = [name for name, _ in table]
        self.templates: dict[str, list[str]] = {name: list(t[: config.num_templates]) for name, t in table}
        self.values: dict[str, list[str]] = {}
        for name in self.relations:
            if name in _MADE_UP_SUFFIX:
                self.values[name] = [names(1, 2, _MADE_UP_SUFFIX[name]) for _ in range(config.num_values)]
            else:
                self.values[name] = list(_PLAIN_VALUES[name][: config.num_values])
        self.entities: list[str] = [names() for _ in range(config.num_entities)]
        # Balanced answers (each value used about equally often) keep the model from winning by a
        # majority guess, and give every value enough holders to serve as CounterFact-style neighbours.
        self.truth: dict[tuple[str, str], str] = {}
        for relation in self.relations:
            pool = [self.values[relation][i % config.num_values] for i in range(config.num_entities)]
            rng.shuffle(pool)
            self.truth.update({(s, relation): v for s, v in zip(self.entities, pool, strict=True)})
        self.facts: list[Fact] = [Fact(s, r, self.truth[s, r]) for s in self.entities for r in self.relations]

        order = list(self.entities)
        rng.shuffle(order)
        n_eval = round(config.eval_subject_fraction * len(order))
        n_neighbour = max(1, round(config.neighbour_subject_fraction * len(order)))
        self.split_subjects: dict[str, list[str]] = {
            "eval": order[:n_eval],
            "neighbour": order[n_eval : n_eval + n_neighbour],
            "train": order[n_eval + n_neighbour :],
        }
        neighbours = self.split_subjects["neighbour"]
        # split -> the neighbour subjects its records' locality prompts are about
        self.neighbour_pools: dict[str, list[str]] = {"train": neighbours, "eval": neighbours}
        if config.split_neighbours:
            n_train = len(self.split_subjects["train"])
            cut = round(len(neighbours) * n_eval / (n_eval + n_train))
            if not 0 < cut < len(neighbours):
                raise ValueError("split_neighbours needs enough neighbour subjects for both splits")
            self.neighbour_pools = {"eval": neighbours[:cut], "train": neighbours[cut:]}
        self._records = {split: self._make_records(split, rng) for split in ("train", "eval")}

    def prompt(self, subject: str, relation: str, template: int) -> str:
        return self.templates[relation][template].format(subject)

    def sentence(self, fact: Fact, template: int) -> str:
        """The fact stated under one template: prompt, one space, answer."""
        return f"{self.prompt(fact.subject, fact.relation, template)} {fact.object}"

    def _make_records(self, split: str, rng: random.Random) -> list[EditRecord]:
        config = self.config
        neighbours = self.neighbour_pools[split]
        records = []
        for subject in self.split_subjects[split]:
            for relation in self.relations:
                true = self.truth[subject, relation]
                new = rng.choice([v for v in self.values[relation] if v != true])
                order = list(range(len(self.templates[relation])))
                rng.shuffle(order)
                main, paraphrase_ids = order[0], order[1 : 1 + config.num_paraphrases]
                # CounterFact's neighbourhood: other subjects sharing the true answer, so an edit that
                # rewrites "everything with answer X" is caught; topped up with other neighbours.
                same = [n for n in neighbours if self.truth[n, relation] == true]
                other = [n for n in neighbours if self.truth[n, relation] != true]
                rng.shuffle(same)
                rng.shuffle(other)
                chosen = (same + other)[: config.num_neighbours]
                loc_templates = [rng.randrange(len(self.templates[relation])) for _ in chosen]
                records.append(
                    EditRecord(
                        prompt=self.prompt(subject, relation, main),
                        target_new=new,
                        subject=subject,
                        target_true=true,
                        paraphrase_prompts=tuple(self.prompt(subject, relation, t) for t in paraphrase_ids),
                        locality_prompts=tuple(
                            self.prompt(n, relation, t) for n, t in zip(chosen, loc_templates, strict=True)
                        ),
                        locality_answers=tuple(self.truth[n, relation] for n in chosen),
                        family="counterfact",
                        case_id=f"tinyworld-{split}-{len(records)}",
                        extra={"relation": relation, "template": main},
                    )
                )
        # Interleave relations and subjects so any prefix (a benchmark's first N edits) is varied.
        rng.shuffle(records)
        return records

    def edit_records(self, split: str) -> list[EditRecord]:
        """CounterFact-style edit requests of the "train" or "eval" split (disjoint subjects)."""
        if split not in self._records:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return list(self._records[split])

    def general_texts(self, split: str | None = None) -> list[str]:
        """True facts as plain sentences: every fact under every template (the pretraining corpus), or
        one of its parts:

        - "probe": its first PROBE_SIZE sentences, the perplexity probe;
        - "stats": every sentence about a subject that no evaluation record mentions (edit subjects of
          the train split; with ``split_neighbours`` the train split's neighbours too) and that the probe
          does not mention: the corpus of the closed-form editors' key statistics, disjoint from the
          probe and from every evaluation prompt (edit, paraphrase and locality).
        """
        texts = [
            (f.subject, self.sentence(f, t))
            for f in self.facts
            for t in range(len(self.templates[f.relation]))
        ]
        if split is None:
            return [text for _, text in texts]
        if split == "probe":
            return [text for _, text in texts[:PROBE_SIZE]]
        if split == "stats":
            in_probe = {subject for subject, _ in texts[:PROBE_SIZE]}
            allowed = set(self.split_subjects["train"]) | set(self.neighbour_pools["train"])
            allowed -= set(self.neighbour_pools["eval"]) | in_probe
            return [text for subject, text in texts if subject in allowed]
        raise ValueError(f"split must be None, 'probe' or 'stats', got {split!r}")
