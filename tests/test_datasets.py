"""Dataset loaders on the real benchmark files, malformed files, splits, and tokenisation of every record."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from helpers import data_file

from rledit_env.data_files import PACKAGED_DIR
from rledit_env.datasets import (
    DatasetFormatError,
    load_counterfact,
    load_dataset,
    load_fever,
    load_zsre,
    resolve_dataset,
    split_records,
)
from rledit_env.records import EditRecord
from rledit_env.tokenization import IGNORE_INDEX, encode_one

CF_TRAIN = data_file("counterfact-train")
CF_1K = data_file("counterfact-edit-1k")
CF_ROME = data_file("counterfact-rome-sample")
ZSRE = data_file("zsre-1k")
FEVER = data_file("fever-sample")


def _load_quiet(path: Path, **kwargs) -> list[EditRecord]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(path, **kwargs)


# ---------------------------------------------------------------- real files


def test_counterfact_flat_counts_and_mapping():
    train = load_counterfact(CF_TRAIN)
    edit_1k = load_counterfact(CF_1K)
    assert (len(train), len(edit_1k)) == (10000, 1000)
    first = train[0]
    assert first == EditRecord(
        prompt="Toko Yasuda, the",
        target_new="piano",
        subject="Toko Yasuda",
        target_true="guitar",
        paraphrase_prompts=("Toko Yasuda is incredible at",),
        locality_prompts=("John Lennon performs on the",),
        locality_answers=("guitar",),
        family="counterfact",
        case_id=2,
    )
    assert edit_1k[0].case_id == 3087 and edit_1k[0].target_new == "baseball"
    assert edit_1k[0].target_true == "basketball"
    # SOURCES.md: the two splits share no case.
    assert not {r.case_id for r in train} & {r.case_id for r in edit_1k}


def test_counterfact_rome_nested_format():
    records = load_counterfact(CF_ROME)
    assert len(records) == 7
    toko = records[2]
    assert toko.prompt == "Toko Yasuda, the"  # "{}, the" filled with the subject
    assert (toko.subject, toko.target_new, toko.target_true) == ("Toko Yasuda", "piano", "guitar")
    assert len(toko.paraphrase_prompts) == 2 and toko.paraphrase_prompts[1].endswith(
        "Toko Yasuda plays the instrument"
    )
    assert len(toko.locality_prompts) == 10 and set(toko.locality_answers) == {"guitar"}
    assert toko.locality_prompts[0] == "Paul McCartney plays the instrument"
    assert len(toko.extra["attribute_prompts"]) == 10 and len(toko.extra["generation_prompts"]) == 10
    assert records[0].prompt == "The mother tongue of Danielle Darrieux is"
    assert records[0].extra["relation_id"] == "P103"


def test_zsre_mapping_and_empty_answers_skipped():
    raw = json.loads(ZSRE.read_text())
    assert len(raw) == 1000
    with pytest.warns(
        UserWarning, match=r"skipped 2 record\(s\) with empty required text: 'alt' empty in records 534, 723"
    ):
        records = load_zsre(ZSRE)
    # Records 534 and 723 have alt == "": an edit with no answer cannot be made.
    assert len(records) == 998
    assert {r.case_id for r in records} == set(range(1000)) - {534, 723}
    by_id = {r.case_id: r for r in records}
    psy = by_id[12]
    assert psy.prompt == "Who made Psychoticism known?"  # the question is kept, "?" included
    assert (psy.subject, psy.target_new, psy.target_true) == (
        "Psychoticism",
        "Hermann Minkowski",
        "Hans Eysenck",
    )
    assert psy.paraphrase_prompts == ("Who was the original discoverer of Psychoticism?",)
    assert psy.locality_prompts == ("nq question: where was the law and jake wade filmed",)
    assert psy.locality_answers[0].startswith("on location in California's High Sierra")
    assert psy.family == "zsre"
    # Several old answers: the first is target_true, all are kept.
    assert by_id[13].target_true == "Beneden Merwede"
    assert by_id[13].extra["answers"] == ["Beneden Merwede", "Noord"]
    # Ten alts carry a leading space in the file; the record strips it.
    assert raw[174]["alt"] == " Captain Universe" and by_id[174].target_new == "Captain Universe"
    with pytest.raises(
        DatasetFormatError, match=r"zsre_mend_train-1k\.json: record 534: field 'alt' is empty"
    ):
        load_zsre(ZSRE, strict=True)


def test_fever_mapping_keeps_no_change_edits():
    records = load_fever(FEVER)
    assert len(records) == 48
    first = records[0]
    assert first.prompt == "Fox 2000 Pictures released the film Soul Food."
    assert (first.target_new, first.target_true) == ("REFUTES", "SUPPORTS")
    assert len(first.paraphrase_prompts) == 9 and first.subject == ""
    assert first.locality_answers == ("REFUTES",) and first.family == "fever"
    # alt == ans in 11 records: kept, since FEVER counts them as edits.
    same = [r.case_id for r in records if r.target_new == r.target_true]
    assert same == [1, 7, 14, 16, 20, 25, 29, 36, 37, 41, 47]
    assert "Not Enough Info" in {a for r in records for a in r.locality_answers}


@pytest.mark.parametrize(
    ("path", "family"),
    [(CF_TRAIN, "counterfact"), (CF_ROME, "counterfact"), (ZSRE, "zsre"), (FEVER, "fever")],
)
def test_auto_detection(path, family):
    records = _load_quiet(path, limit=5)
    assert len(records) == 5 and {r.family for r in records} == {family}
    assert records == _load_quiet(path, family=family, limit=5)


def test_json_lines_and_limit(tmp_path):
    raw = json.loads(FEVER.read_text())[:10]
    jsonl = tmp_path / "fever.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in raw) + "\n\n")  # blank lines are allowed
    assert load_dataset(jsonl) == load_fever(FEVER, limit=10)
    assert len(load_dataset(jsonl, limit=3)) == 3
    assert load_dataset(jsonl, limit=0) == []


def test_the_whole_counterfact_edit_split_is_packaged_apart_from_the_training_split(monkeypatch):
    monkeypatch.delenv("RLEDIT_DATA_DIR", raising=False)
    path = resolve_dataset("counterfact-edit")
    assert path.is_relative_to(PACKAGED_DIR) and path.name.endswith(".json.gz")  # compressed
    edits = load_dataset("counterfact-edit")
    assert len(edits) == 10_000
    ids = {r.case_id for r in edits}
    assert len(ids) == 10_000 and None not in ids
    assert not ids & {r.case_id for r in load_dataset("counterfact-train")}
    assert {r.case_id for r in load_dataset("counterfact-edit-1k")} <= ids  # the 1k file is part of it


def test_short_names_resolve_to_the_packaged_samples(monkeypatch, tmp_path):
    monkeypatch.delenv("RLEDIT_DATA_DIR", raising=False)
    assert resolve_dataset("fever").is_relative_to(PACKAGED_DIR)
    assert len(load_dataset("fever")) == 48
    assert len(load_dataset("counterfact-edit-1k")) == 1000
    assert load_dataset("counterfact", limit=3) == load_counterfact(CF_TRAIN, limit=3)  # packaged gzip
    with pytest.raises(FileNotFoundError, match="known names"):
        load_dataset("no-such-benchmark")
    # $RLEDIT_DATA_DIR with a file at a known name's relative path takes its place
    own = tmp_path / "fever" / "fever_eval_sample.json"
    own.parent.mkdir()
    own.write_text(json.dumps(json.loads(FEVER.read_text())[:5]))
    monkeypatch.setenv("RLEDIT_DATA_DIR", str(tmp_path))
    assert len(load_dataset("fever")) == 5


def test_wrong_family_names_the_missing_field():
    with pytest.raises(
        DatasetFormatError, match=r"fever_eval_sample\.json: record 0: field 'src' is missing"
    ):
        load_zsre(FEVER)


# ---------------------------------------------------------------- formats without the real files


def _write(tmp_path: Path, records, name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return path


def _zsre_record(**changes):
    record = {
        "subject": "UniFirst",
        "src": "What is the product made by UniFirst?",
        "rephrase": "What will be the product of UniFirst?",
        "alt": "unmanned aircraft",
        "answers": ["uniform"],
        "loc": "nq question: john goodman's character in the big lebowski",
        "loc_ans": "Walter Sobchak",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def test_flat_counterfact_accepts_lists(tmp_path):
    record = {
        "case_id": 7,
        "prompt": ["The capital of France is  "],
        "subject": "France",
        "target_new": " Rome",
        "ground_truth": ["Paris", "paris"],
        "rephrase_prompt": ["France's capital city is", ""],
        "locality_prompt": ["The capital of Spain is", "The capital of Italy is"],
        "locality_ground_truth": ["Madrid", "Rome"],
    }
    (rec,) = load_dataset(_write(tmp_path, [record]))
    assert rec.family == "counterfact" and rec.prompt == "The capital of France is"
    assert (rec.target_new, rec.target_true) == ("Rome", "Paris")
    assert rec.paraphrase_prompts == ("France's capital city is",)  # the empty one is dropped
    assert rec.locality_answers == ("Madrid", "Rome")
    # One answer shared by several locality prompts, and no ground truth at all, are both fine.
    del record["ground_truth"]
    record["locality_ground_truth"] = "Madrid"
    (rec,) = load_dataset(_write(tmp_path, [record]))
    assert rec.target_true is None and rec.locality_answers == ("Madrid", "Madrid")


@pytest.mark.parametrize(
    ("records", "family", "message"),
    [
        ([_zsre_record(), _zsre_record(alt=...)], None, r"bad\.json: record 1: field 'alt' is missing"),
        (
            [_zsre_record(src=12)],
            None,
            r"record 0: field 'src' is not a string or a list of strings \(got int\)",
        ),
        ([_zsre_record(answers=["a", 3])], None, r"record 0: field 'answers\[1\]' is not a string"),
        ([_zsre_record(), "oops"], "zsre", r"record 1: is not a JSON object \(got str\)"),
        ([_zsre_record(loc_ans=...)], None, r"record 0: field 'loc_ans' is missing"),
        ([_zsre_record(alt="  ")], "zsre", r"record 0: field 'alt' is empty"),
        (
            [{"claim": "x", "label": "y"}],
            None,
            r"record 0: has keys \['claim', 'label'\], which match no known",
        ),
        (
            [
                {
                    "prompt": "p",
                    "subject": "s",
                    "target_new": "t",
                    "locality_prompt": ["a", "b", "c"],
                    "locality_ground_truth": ["x", "y"],
                }
            ],
            None,
            r"record 0: field 'locality_ground_truth' has 2 answers for 3 prompts",
        ),
        (
            [
                {
                    "requested_rewrite": {
                        "prompt": "{} plays",
                        "subject": "X",
                        "target_new": {"id": "Q1"},
                        "target_true": {"str": "a"},
                    }
                }
            ],
            None,
            r"record 0: field 'requested_rewrite\.target_new\.str' is missing",
        ),
        (
            [
                {
                    "requested_rewrite": {
                        "prompt": "X plays",
                        "subject": "X",
                        "target_new": "a",
                        "target_true": "b",
                    }
                }
            ],
            None,
            r"record 0: field 'requested_rewrite\.prompt' has no '\{\}'",
        ),
        ([{"requested_rewrite": ["x"]}], None, r"record 0: field 'requested_rewrite' is not a JSON object"),
        ([], None, r"bad\.json: holds no records"),
        ({"data": []}, None, r"bad\.json: record 0: has keys \['data'\]"),
    ],
)
def test_malformed_records(tmp_path, records, family, message):
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset(_write(tmp_path, records), family=family, strict=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"src": "a",\n  "alt" "b"}]', r"bad\.json: invalid JSON at line 2, column 9"),
        ('{"src": "a", "alt": "b"}\n{"src": "a" "alt": "b"}\n', r"bad\.json: invalid JSON lines at line 2"),
        (
            '{\n  "data": []\n}\n',
            r"bad\.json: holds one JSON object; expected a list of records or JSON lines",
        ),
        ("   \n", r"bad\.json: is empty"),
        ("src,alt\n", r"bad\.json: is neither a JSON list nor JSON lines"),
    ],
)
def test_invalid_json(tmp_path, text, message):
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset(_write(tmp_path, text))


def test_format_error_attributes(tmp_path):
    path = _write(tmp_path, [_zsre_record(), _zsre_record(), _zsre_record(subject=None)], "zsre.json")
    with pytest.raises(DatasetFormatError) as info:
        load_zsre(path)
    assert isinstance(info.value, ValueError)
    assert (info.value.path, info.value.index, info.value.field) == (path, 2, "subject")
    assert str(info.value) == "zsre.json: record 2: field 'subject' is missing"


def test_split_records_is_seeded_disjoint_and_keeps_duplicates_together():
    records = [
        EditRecord(prompt=f"{s} lives in", target_new=f"city{i}", subject=s)
        for i, s in enumerate("abcdefghij")
    ]
    records += [
        EditRecord(prompt="a lives in", target_new="elsewhere", subject="a")
    ]  # same edit prompt as records[0]
    train, evals = split_records(records, 0.3, seed=1)
    assert len(train) + len(evals) == len(records) and len(evals) in (3, 4)
    assert not {id(r) for r in train} & {id(r) for r in evals}
    assert (records[0] in train) == (records[-1] in train)
    assert split_records(records, 0.3, seed=1) == (train, evals)
    assert any(split_records(records, 0.3, seed=s) != (train, evals) for s in range(2, 6))
    with pytest.raises(ValueError, match="eval_fraction"):
        split_records(records, 1.0, seed=0)


# ---------------------------------------------------------------- tokenisation of every real record


def _all_pairs() -> list[tuple[str, str]]:
    """Every (prompt, answer) a metric asks about, over all real files, without repeats."""
    pairs: dict[tuple[str, str], None] = {}
    for path in (CF_TRAIN, CF_1K, CF_ROME, ZSRE, FEVER):
        for r in _load_quiet(path):
            pairs[(r.prompt, r.target_new)] = None
            if r.target_true:
                pairs[(r.prompt, r.target_true)] = None
            pairs.update(dict.fromkeys((p, r.target_new) for p in r.paraphrase_prompts))
            pairs.update(dict.fromkeys(zip(r.locality_prompts, r.locality_answers, strict=True)))
    return list(pairs)


def _byte_level(corpus: list[str], trim_offsets: bool = False):
    """GPT-2-style byte-level BPE (GPT-2's own tokenizer.json has trim_offsets=False)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _sentencepiece(corpus: list[str], alphabet: list[str]):
    """SentencePiece-style BPE ("▁" word marker) with a template that prepends BOS, as Llama does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    # Every character of the data (and the marker) is in the alphabet, so no answer falls into <unk>.
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=[*alphabet, "▁"], special_tokens=["<unk>", "<s>", "</s>"]
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def real_pairs() -> list[tuple[str, str]]:
    return _all_pairs()


@pytest.mark.parametrize(
    "style",
    [
        "byte-level",
        "sentencepiece-bos",
        "byte-level-trimmed-offsets",
    ],
)
def test_every_real_record_tokenises(real_pairs, style):
    corpus = [f"{p} {a}" for p, a in real_pairs[::80]][:500]
    if style == "sentencepiece-bos":
        tokenizer = _sentencepiece(corpus, sorted({c for p, a in real_pairs for c in p + a}))
    else:
        tokenizer = _byte_level(corpus, trim_offsets=style == "byte-level-trimmed-offsets")
    bos = tokenizer.bos_token_id if style == "sentencepiece-bos" else None
    wrong = []
    for prompt, answer in real_pairs:
        ids, labels = encode_one(tokenizer, prompt, answer)
        assert labels[0] == IGNORE_INDEX and (bos is None or ids[0] == bos)
        answer_ids = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        # Labels mark one contiguous tail: the answer, never a prompt token.
        assert labels[len(ids) - len(answer_ids) :] == answer_ids, (
            f"labels of {answer!r} after {prompt!r} are not one contiguous tail: "
            f"{list(zip(tokenizer.convert_ids_to_tokens(ids), labels, strict=True))}"
        )
        if tokenizer.decode(answer_ids) not in (answer, " " + answer):
            wrong.append((prompt, answer, tokenizer.decode(answer_ids)))
    assert not wrong, f"{len(wrong)} answers do not decode back, e.g. {wrong[:3]}"


def test_a_file_with_no_usable_record_is_an_error_naming_what_was_dropped(tmp_path):
    path = _write(tmp_path, [_zsre_record(src=""), _zsre_record(alt=" ")])
    with pytest.raises(
        DatasetFormatError, match=r"bad\.json: yields no usable record; skipped 2 record"
    ) as err:
        load_dataset(path)
    assert "'src' empty in record 0; 'alt' empty in record 1" in str(err.value)
    assert load_dataset(path, limit=0) == []  # asking for no records is not an error
    many = _write(tmp_path, [_zsre_record(alt="") for _ in range(25)])
    with pytest.raises(
        DatasetFormatError, match=r"skipped 25 .*'alt' empty in records 0, 1, .*9 and 15 more"
    ):
        load_dataset(many)


@pytest.mark.parametrize(
    "family, record",
    [
        ("counterfact", {"prompt": "", "subject": "X", "target_new": "a", "ground_truth": "b"}),
        ("zsre", {"subject": "X", "src": "", "alt": "a", "answers": ["b"], "loc": "l", "loc_ans": "m"}),
        ("fever", {"prompt": "", "ans": "SUPPORTS", "alt": "REFUTES", "unrel_prompt": "u", "unrel_ans": "v"}),
    ],
)
def test_a_file_whose_only_record_has_an_empty_prompt_is_an_error(tmp_path, family, record):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DatasetFormatError, match=r"one\.jsonl: yields no usable record; skipped 1 record"):
        load_dataset(path, family=family)
