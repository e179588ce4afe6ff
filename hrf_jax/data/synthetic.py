"""`synthetic`: a deterministic emotional-speech synthesizer (numpy only).

Source-filter synthesis: a glottal pulse train whose period follows an F0 contour (with
per-period jitter and per-pulse shimmer) plus aspiration noise (breathiness) drives a
cascade of four formant resonators per vowel-like segment, with a source spectral tilt;
consonants are band-passed noise bursts. Classes differ by the acoustic correlates reported
for acted emotional speech (Scherer 2003; Banse & Scherer 1996; Juslin & Laukka 2003):
anger and happiness raise F0, F0 range, intensity and speaking rate, sadness lowers them and
adds breathiness; anger has a flatter (pressed) spectral tilt, more jitter/shimmer and sharp
early accent peaks, happiness wide smooth rising accents. Every utterance blends its class
profile with a random mixture of the others and adds per-speaker and per-utterance spread;
`difficulty` scales both, so classes overlap and model capacity matters.

The `headroom` preset (corpus `synthetic_headroom`) is the test bed of the HRF study: six
classes (adding fear and boredom, Banse & Scherer 1996), per-speaker offsets of every emotion
parameter, the emotion expressed in one stretch of the utterance only (the rest is the
speaker's neutral voice, so part of the cue is a contrast inside the utterance), and a
random channel (band limits, equalisation) and coloured noise per utterance. It is meant to
give a bigger model something to gain over a light one; whether it does is the gate reported
in experiments/results/hrf_study.md.

`lexicon` > 0 adds words: a fixed vocabulary of `lexicon` words per class, each a sequence of
2-3 syllables from a closed inventory (six consonant bands x five vowels, or a bare vowel).
An utterance is spoken word by word, half of its words drawn from its class's list and the
rest from the whole vocabulary, so part of the cue is *what* is said, as emotion words are
in real speech. Using that cue means learning a vocabulary of 6 x `lexicon` acoustic
patterns across speakers and channels: meant as a cue whose difficulty grows with the
vocabulary rather than with the overlap of the classes' prosody (whether it rewards a bigger
model is what the bed `headroom_lexical` of experiments/hrf_study.py measures).

`flat` names emotion parameters whose class means are all set to neutral's: they are still
drawn and spoken, but carry no class. It ablates the cues one at a time, to test which of
them a trained model uses (experiments/results/hrf_study_lexical_reading.md).

It exists so that the whole pipeline (prepare, train, HRF merge, export) runs and means
something without licensed corpora; it is not a substitute for real speech.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hrf_jax.audio import SAMPLE_RATE
from hrf_jax.data.registry import HEADROOM_CLASSES
from hrf_jax.data.registry import SYNTHETIC_CLASSES as CLASS_NAMES
from hrf_jax.data.registry import SYNTHETIC_OPTIONS as _DEFAULTS
from hrf_jax.data.synthetic_filters import channel, fade, fft_filter, formant_gain
from hrf_jax.data.synthetic_profiles import EXTRA_PROFILE as _EXTRA_PROFILE
from hrf_jax.data.synthetic_profiles import PROFILE as _PROFILE

PRESETS = {"basic": CLASS_NAMES, "headroom": HEADROOM_CLASSES}  # preset -> class names

LATENTS = tuple(_PROFILE)  # the emotion parameters `latents` returns, in this order

# Formants (Hz) of five vowels for an adult male vocal tract (Peterson & Barney).
_VOWELS = np.array([
    [730.0, 1090.0, 2440.0, 3400.0],  # a
    [530.0, 1840.0, 2480.0, 3500.0],  # e
    [270.0, 2290.0, 3010.0, 3700.0],  # i
    [570.0, 840.0, 2410.0, 3300.0],  # o
    [300.0, 870.0, 2240.0, 3300.0],  # u
])
# The lexicon's consonants: noise bands at fixed centres (Hz; the random syllables draw theirs
# from 2.5-6.5 kHz), so that a syllable's identity is its consonant band and its vowel.
_CONSONANTS = np.array([2600.0, 3200.0, 3900.0, 4700.0, 5500.0, 6300.0])
_OWN_WORDS = 0.5  # the share of an utterance's words drawn from its own class's list


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and difficulty knobs of the synthetic corpus (defaults: the corpus registry's)."""

    num_utterances: int = _DEFAULTS["num_utterances"]
    num_speakers: int = _DEFAULTS["num_speakers"]
    seed: int = _DEFAULTS["seed"]
    difficulty: float = _DEFAULTS["difficulty"]  # 0: prototypical classes; larger: more overlap
    min_seconds: float = _DEFAULTS["min_seconds"]
    max_seconds: float = _DEFAULTS["max_seconds"]
    preset: str = "basic"  # "headroom": the HRF study's test bed (module docstring)
    lexicon: int = _DEFAULTS["lexicon"]  # words per class (module docstring); 0: no words
    # emotion parameters (comma-separated LATENTS names) whose class means are all set to
    # neutral's, so that they carry no class: an ablation of the cues one at a time
    flat: str = _DEFAULTS["flat"]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The preset's classes, in label order."""
        return PRESETS[self.preset]

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {self.preset!r}; choose from "
                             f"{', '.join(PRESETS)}")
        if self.num_speakers < 3:
            raise ValueError("synthetic needs >= 3 speakers (train/validation/test by speaker)")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError("need 0 < min_seconds <= max_seconds")
        if self.lexicon < 0:
            raise ValueError(f"lexicon must be >= 0 words per class, got {self.lexicon}")
        unknown = sorted(set(self.flat_cues) - set(LATENTS))
        if unknown:
            raise ValueError(f"flat: unknown emotion parameter(s) {unknown}; choose from "
                             f"{', '.join(LATENTS)}")

    @property
    def flat_cues(self) -> tuple[str, ...]:
        """The parameters of ``flat``, in the order given."""
        return tuple(name.strip() for name in self.flat.split(",") if name.strip())


def speaker_split(speaker: int, num_speakers: int) -> str:
    """Speaker-independent split: the last ~1/6 of speakers test, the ~1/6 before validation."""
    n_test = max(1, round(num_speakers / 6))
    n_val = max(1, round(num_speakers / 6))
    if speaker >= num_speakers - n_test:
        return "test"
    if speaker >= num_speakers - n_test - n_val:
        return "validation"
    return "train"


def _speaker_traits(cfg: SyntheticConfig, speaker: int) -> dict:
    rng = np.random.default_rng([cfg.seed, 1, speaker])
    female = speaker % 2 == 0  # alternate genders so every split is balanced
    wide = 1.5 if cfg.preset == "headroom" else 1.0  # headroom: speakers differ more
    return {
        "f0": (205.0 if female else 118.0) * np.exp(rng.normal(0.0, 0.1 * wide)),
        "vtl": (1.16 if female else 1.0) * np.exp(rng.normal(0.0, 0.04)),  # formant scale
        "tilt": rng.normal(0.0, 1.5 * wide),
        "rate": np.exp(rng.normal(0.0, 0.1 * wide)),
        "breath_db": rng.normal(0.0, 3.0 * wide),
        "level_db": rng.normal(0.0, 2.0),
    }


def _profile(cfg: SyntheticConfig) -> dict:
    profile = _PROFILE if cfg.preset == "basic" else {
        k: ((*means, *_EXTRA_PROFILE[k]), spread) for k, (means, spread) in _PROFILE.items()}
    flat = cfg.flat_cues
    return {k: (((means[0],) * len(means), spread) if k in flat else (means, spread))
            for k, (means, spread) in profile.items()}


def _speaker_offsets(cfg: SyntheticConfig, speaker: int) -> dict:
    """Headroom: the speaker's own offset of every emotion parameter (its habitual pitch,
    rate, voice quality), half the within-class spread, the same for all its classes."""
    rng = np.random.default_rng([cfg.seed, 4, speaker])
    return {k: 0.5 * spread * rng.normal() for k, (_, spread) in _PROFILE.items()}


def utterance_plan(cfg: SyntheticConfig, index: int) -> tuple[int, int]:
    """(label, speaker) of utterance `index`: speakers round-robin, classes balanced per speaker."""
    speaker = index % cfg.num_speakers
    label = (index // cfg.num_speakers + speaker) % len(cfg.class_names)
    return label, speaker


def _emotion_params(rng: np.random.Generator, label: int, difficulty: float,
                    profile: dict) -> dict:
    n = len(next(iter(profile.values()))[0])
    blend = rng.uniform(0.0, min(0.9, 0.45 * difficulty))
    weights = (1.0 - blend) * np.eye(n)[label] + blend * rng.dirichlet(np.ones(n))
    return {k: float(weights @ np.asarray(means) + spread * difficulty * rng.normal())
            for k, (means, spread) in profile.items()}


def latents(cfg: SyntheticConfig, index: int) -> np.ndarray:
    """The emotion parameters (``LATENTS`` order) utterance ``index`` was generated from,
    before speaker offsets: what an oracle that saw the generator, not the audio, knows.
    With a lexicon, then the share of its words from each class's list (class order)."""
    if cfg.lexicon:
        plan = _plan(cfg, index)
        return np.concatenate([[plan.emotion[k] for k in LATENTS], _word_shares(cfg, plan)])
    label, _ = utterance_plan(cfg, index)
    rng = np.random.default_rng([cfg.seed, 2, index])
    p = _emotion_params(rng, label, cfg.difficulty, _profile(cfg))
    return np.array([p[k] for k in LATENTS])


def spoken_cues(cfg: SyntheticConfig, index: int) -> dict[str, np.ndarray]:
    """Headroom preset: the emotion parameters as utterance ``index`` speaks them, for
    oracles between ``latents`` and the audio. ``stretch`` / ``neutral``: the parameters
    (``LATENTS`` order) of the emotional stretch and of the neutral voice around it, both
    with the speaker's offsets; ``realized``: the syllable rate (per second of the
    utterance) and the share of syllables followed by a pause, as drawn (the ``rate`` and
    ``pause`` parameters only set their odds); ``words``: the share of the words from each
    class's list (empty without a lexicon)."""
    if cfg.preset != "headroom":
        raise ValueError(f"spoken_cues needs the headroom preset, not {cfg.preset!r}")
    plan = _plan(cfg, index)
    syllables = sum(kind == 1 for _, _, kind, _ in plan.segments)
    return {"stretch": np.array([plan.expr.emotion[k] for k in LATENTS]),
            "neutral": np.array([plan.expr.neutral[k] for k in LATENTS]),
            "realized": np.array([syllables * SAMPLE_RATE / plan.n,
                                  plan.pauses / max(syllables, 1)]),
            "words": _word_shares(cfg, plan) if cfg.lexicon else np.zeros(0)}


def _word_shares(cfg: SyntheticConfig, plan: _Plan) -> np.ndarray:
    """The share of the plan's words from each class's list, in class order."""
    return np.bincount([word // cfg.lexicon for word in plan.words],
                       minlength=len(cfg.class_names)) / max(len(plan.words), 1)


def _vocabulary(cfg: SyntheticConfig) -> list[tuple[tuple[int, int], ...]]:
    """The lexicon: word ``c * lexicon + j`` is the j-th word of class c, a tuple of
    (consonant, vowel) syllables (consonant -1: a bare vowel); distinct words, fixed by the
    corpus seed."""
    rng = np.random.default_rng([cfg.seed, 6])
    words: dict[tuple[tuple[int, int], ...], None] = {}
    while len(words) < cfg.lexicon * len(cfg.class_names):
        size = int(rng.integers(2, 4))
        word = tuple((int(rng.integers(-1, _CONSONANTS.size)), int(rng.integers(len(_VOWELS))))
                     for _ in range(size))
        words.setdefault(word)
    return list(words)


class _Expression:
    """Where in the utterance the emotion is expressed: everywhere (basic), or one stretch of
    50-80 % of it with 100 ms raised-cosine ramps, the speaker's neutral voice elsewhere
    (headroom). ``value(name, at)`` is the parameter at sample ``at``."""

    def __init__(self, cfg: SyntheticConfig, emotion: dict, speaker: int, index: int, n: int):
        self.weight = None
        self.emotion = emotion
        if cfg.preset == "basic":
            return
        rng = np.random.default_rng([cfg.seed, 3, index])
        offsets = _speaker_offsets(cfg, speaker)
        neutral = {k: means[0] + 0.5 * spread * cfg.difficulty * rng.normal()
                   for k, (means, spread) in _PROFILE.items()}
        self.emotion = {k: v + offsets[k] for k, v in emotion.items()}
        self.neutral = {k: v + offsets[k] for k, v in neutral.items()}
        width = rng.uniform(0.5, 0.8) * n
        start = rng.uniform(0.0, n - width)
        ramp = 0.1 * SAMPLE_RATE
        t = np.arange(n)
        rise = np.clip((t - start) / ramp, 0.0, 1.0)
        fall = np.clip((start + width - t) / ramp, 0.0, 1.0)
        self.weight = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))

    def gain(self, at: int) -> float:
        """Headroom: the amplitude of the segment at ``at`` re. the neutral voice."""
        if self.weight is None:
            return 1.0
        return 10.0 ** ((self.value("level_db", at) - self.neutral["level_db"]) / 20.0)

    def level_db(self) -> float:
        """The level the utterance is scaled to: its emotion's (basic) or, as the emotional
        stretch carries its own gain, the neutral voice's (headroom)."""
        return self.emotion["level_db"] if self.weight is None else self.neutral["level_db"]

    def value(self, name: str, at: int | np.ndarray | None = None):
        if self.weight is None:
            return self.emotion[name]
        w = self.weight if at is None else self.weight[np.minimum(at, self.weight.size - 1)]
        return w * self.emotion[name] + (1.0 - w) * self.neutral[name]


@dataclasses.dataclass
class _Plan:
    """What utterance ``index`` says and how, before any audio: the draws ``synthesize``
    continues from (``rng``), and the words spoken (vocabulary indices; empty without a
    lexicon)."""

    label: int
    speaker: int
    rng: np.random.Generator
    emotion: dict
    n: int
    expr: _Expression
    speaker_traits: dict
    # (start, length, kind, identity): kind 0 consonant (identity: its band, -1 random), 1 vowel
    segments: list[tuple[int, int, int, int]]
    words: list[int]
    pauses: int  # pauses drawn after syllables


def _plan(cfg: SyntheticConfig, index: int) -> _Plan:
    label, speaker = utterance_plan(cfg, index)
    rng = np.random.default_rng([cfg.seed, 2, index])
    spk = _speaker_traits(cfg, speaker)
    p = _emotion_params(rng, label, cfg.difficulty, _profile(cfg))
    sr = SAMPLE_RATE
    span = cfg.max_seconds - cfg.min_seconds
    n = int(sr * (cfg.min_seconds + span * rng.beta(1.6, 2.4)))
    expr = _Expression(cfg, p, speaker, index, n)
    if cfg.lexicon:
        vocabulary = _vocabulary(cfg)
        word_rng = np.random.default_rng([cfg.seed, 7, index])
    pending: list[tuple[int, int]] = []  # the current word's syllables still to say
    words: list[int] = []
    pauses = 0

    segments, t = [], int(sr * rng.uniform(0.05, 0.15))
    while t < n - int(0.1 * sr):
        if cfg.lexicon and not pending:
            own = word_rng.random() < _OWN_WORDS
            cls = label if own else int(word_rng.integers(len(cfg.class_names)))
            words.append(cls * cfg.lexicon + int(word_rng.integers(cfg.lexicon)))
            pending = list(vocabulary[words[-1]])
        rate = max(1.5, expr.value("rate", t) * spk["rate"])
        syll = int(sr / rate * np.exp(rng.normal(0.0, 0.2)))
        if pending:
            consonant, vowel = pending.pop(0)
            cons = int(syll * rng.uniform(0.15, 0.35)) if consonant >= 0 else 0
        else:
            consonant = -1
            cons = int(syll * rng.uniform(0.15, 0.35)) if rng.random() < 0.75 else 0
            vowel = int(rng.integers(len(_VOWELS)))
        if cons:
            segments.append((t, cons, 0, consonant))
        segments.append((t + cons, syll - cons, 1, vowel))
        # pauses fall between words when there are words
        if not pending and rng.random() < np.clip(expr.value("pause", t), 0.0, 0.6):
            t += syll + int(sr * rng.uniform(0.12, 0.35))
            pauses += 1
        else:
            t += syll
    segments = [(s, min(ln, n - s), k, v) for s, ln, k, v in segments if n - s > 8]
    return _Plan(label, speaker, rng, p, n, expr, spk, segments, words, pauses)


def synthesize(cfg: SyntheticConfig, index: int) -> tuple[np.ndarray, int, int]:
    """Utterance `index` -> (waveform (N,) float32 at 16 kHz, label, speaker); deterministic."""
    plan = _plan(cfg, index)
    rng, n, expr, spk, segments = plan.rng, plan.n, plan.expr, plan.speaker_traits, plan.segments
    sr = SAMPLE_RATE
    vowels = [s for s in segments if s[2] == 1]

    # F0 contour (semitones re. speaker base): declination + one accent bump per vowel.
    time = np.arange(n) / sr
    semis = (expr.value("f0_st") + expr.value("decl") * (time - time[-1] / 2)
             + 0.3 * np.sin(2 * np.pi * 5.0 * time))
    for start, length, _, _ in vowels:
        peak = float(np.clip(expr.value("peak_pos", start), 0.05, 0.95))
        u = np.clip((np.arange(length) / max(length, 1) - peak) / 0.5, -1.0, 1.0)
        semis[start:start + length] += max(expr.value("f0_range", start), 0.0) * rng.uniform(
            0.4, 1.0) * (0.5 + 0.5 * np.cos(np.pi * u))
    f0 = np.clip(spk["f0"] * 2.0 ** (semis / 12.0), 60.0, 600.0)

    # Glottal pulses: one per F0 period, jittered in time and shimmered in amplitude.
    phase = np.cumsum(f0 / sr)
    pulse_at = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    jitter = np.maximum(expr.value("jitter", pulse_at), 0.0) * rng.standard_normal(
        pulse_at.size) * sr / f0[pulse_at]
    pulse_at = np.clip(np.round(pulse_at + jitter).astype(np.int64), 0, n - 1)
    excitation = np.zeros(n)
    np.add.at(excitation, pulse_at, 1.0 + np.maximum(expr.value("shimmer", pulse_at), 0.0)
              * rng.standard_normal(pulse_at.size))

    out = np.zeros(n + sr // 10)
    tail = sr // 50
    for start, length, kind, identity in segments:
        if kind == 1:
            formants = _VOWELS[identity] * spk["vtl"] * np.exp(rng.normal(0.0, 0.05, 4))
            src = excitation[start:start + length]
            breath = 10.0 ** ((expr.value("breath_db", start) + spk["breath_db"]) / 20.0) * 0.1
            noise = rng.standard_normal(length) * breath
            tilt = expr.value("tilt", start) + spk["tilt"]

            def voiced(f, formants=formants, tilt=tilt):
                return formant_gain(f, formants) * (np.maximum(f, 100.0) / 100.0) ** (
                    tilt / 6.02)

            def aspiration(f, formants=formants):
                return formant_gain(f, formants) * (np.maximum(f, 500.0) / 500.0) ** -1.0

            seg = fft_filter(src, voiced, tail) + fft_filter(noise, aspiration, tail)
            seg *= fade(seg.size, sr // 200)
        else:
            centre = rng.uniform(2500.0, 6500.0)
            width = rng.uniform(0.3, 0.7)
            if identity >= 0:  # a lexicon consonant: its band, a fixed width
                centre, width = _CONSONANTS[identity], 0.35

            def band(f, centre=centre, width=width):
                return np.exp(-0.5 * (np.log(np.maximum(f, 1.0) / centre) / width) ** 2)

            seg = fft_filter(rng.standard_normal(length), band, tail) * rng.uniform(0.2, 0.8)
            seg *= fade(seg.size, sr // 400)
        out[start:start + seg.size] += seg * expr.gain(start)
    out = out[:n]

    rms = np.sqrt(np.mean(out**2)) + 1e-9
    # Recording gain varies per utterance, so intensity alone is an unreliable cue.
    level_db = expr.level_db() + spk["level_db"] + rng.normal(0.0, 3.0 * cfg.difficulty)
    wave = out / rms * 0.05 * 10.0 ** (level_db / 20.0)
    if cfg.preset == "headroom":
        wave = channel(np.random.default_rng([cfg.seed, 5, index]), wave)
    wave += rng.standard_normal(n) * 10.0 ** (rng.uniform(-62.0, -48.0) / 20.0)
    return np.clip(wave, -1.0, 1.0).astype(np.float32), plan.label, plan.speaker
