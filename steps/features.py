"""DVC stage `features`: log-mel + codec codes of every prepared utterance, sharded and resumable.
A `melvq` codec is fitted first on the training split (stage1's seed, val_fraction, heldout_speakers)."""
from tristage.stage import main


def run(params, tracker):
    from tristage.features.extract import run_features

    return run_features(params.features, tracker=tracker, split=params.stage1)


if __name__ == "__main__":
    main("features", run, description=__doc__)
