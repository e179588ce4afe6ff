"""The synthetic corpus's emotion profiles: the mean of each acoustic parameter per class
and its within-class spread, after the correlates reported for acted emotional speech
(Scherer 2003; Banse & Scherer 1996; Juslin & Laukka 2003). Used by
``hrf_jax.data.synthetic``."""

# Class profiles, one column per basic class (neutral, happy, angry, sad), and the
# within-class spread (standard deviation at difficulty 1) of each parameter.
PROFILE = {
    #                 neutral happy  angry  sad     spread
    "f0_st": ((0.0, 4.5, 3.5, -2.0), 1.8),  # mean F0 shift from speaker base, semitones
    "f0_range": ((2.5, 6.0, 4.5, 1.2), 1.2),  # accent excursion, semitones
    "decl": ((-1.0, 0.6, -2.0, -1.6), 0.9),  # F0 declination, semitones per second
    "peak_pos": ((0.5, 0.65, 0.2, 0.45), 0.15),  # accent peak position inside a syllable
    "rate": ((4.2, 5.0, 5.3, 3.1), 0.5),  # syllables per second
    "level_db": ((0.0, 4.0, 7.0, -5.0), 2.5),  # intensity
    "tilt": ((-12.0, -10.0, -6.5, -14.5), 1.5),  # source spectral tilt, dB per octave
    "jitter": ((0.006, 0.010, 0.020, 0.008), 0.004),  # period perturbation, fraction
    "shimmer": ((0.03, 0.045, 0.08, 0.04), 0.015),  # pulse amplitude perturbation, fraction
    "breath_db": ((-26.0, -22.0, -30.0, -13.0), 4.0),  # aspiration noise re. voicing
    "pause": ((0.10, 0.07, 0.05, 0.25), 0.05),  # probability of a pause after a syllable
}
# The headroom preset's two further classes (fear: high, narrow, fast, tense; boredom: low,
# flat, slow, soft), same parameters and order as PROFILE.
EXTRA_PROFILE = {
    #                 fear   boredom
    "f0_st": (5.5, -1.0), "f0_range": (2.0, 0.8), "decl": (0.8, -0.6), "peak_pos": (0.35, 0.5),
    "rate": (5.6, 3.3), "level_db": (1.0, -3.0), "tilt": (-9.0, -13.5),
    "jitter": (0.018, 0.006), "shimmer": (0.06, 0.035), "breath_db": (-16.0, -24.0),
    "pause": (0.12, 0.15),
}
