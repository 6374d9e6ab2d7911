"""The edit record: one fact to change, with what an editor is judged on."""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("counterfact", "zsre", "fever")


@dataclass(frozen=True)
class EditRecord:
    """One edit request, in CounterFact's shape (every dataset is loaded into it).

    Prompts carry no trailing space and answers no leading space: tokenisation joins them with one
    space (`rledit_env.tokenization`), which is right for both GPT-2-style BPE and SentencePiece.

    Attributes:
        prompt: the edit prompt with the subject filled in, e.g. "The mother tongue of X is".
        target_new: the answer the edit installs.
        subject: the subject string inside ``prompt`` (closed-form editors locate it).
        target_true: the answer before the edit, when known (CounterFact-style metrics need it).
        paraphrase_prompts: other phrasings of ``prompt``; generalisation is judged on them.
        locality_prompts: unrelated (or neighbourhood) prompts whose answers must not change.
        locality_answers: one answer per locality prompt.
        family: "counterfact", "zsre" or "fever": which metric suite is the headline one.
        case_id: the record's id in its source, if any.
    """

    prompt: str
    target_new: str
    subject: str = ""
    target_true: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    locality_prompts: tuple[str, ...] = ()
    locality_answers: tuple[str, ...] = ()
    family: str = "counterfact"
    case_id: str | int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"EditRecord.{name} must be a non-empty string, got {value!r}")
        if len(self.locality_prompts) != len(self.locality_answers):
            raise ValueError(
                f"EditRecord has {len(self.locality_prompts)} locality prompts but "
                f"{len(self.locality_answers)} locality answers"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"EditRecord.family must be one of {FAMILIES}, got {self.family!r}")
        # Normalise the joints once, so tokenisation never sees double spaces.
        object.__setattr__(self, "prompt", self.prompt.rstrip())
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip())
        object.__setattr__(self, "paraphrase_prompts", tuple(p.rstrip() for p in self.paraphrase_prompts))
        object.__setattr__(self, "locality_prompts", tuple(p.rstrip() for p in self.locality_prompts))
        object.__setattr__(self, "locality_answers", tuple(a.strip() for a in self.locality_answers))
