"""DVC stage `features`: log-mel + DAC codes of every prepared utterance, sharded and resumable."""
from tristage.stage import main


def run(params, tracker):
    from tristage.features.extract import run_features

    return run_features(params.features, tracker=tracker)


if __name__ == "__main__":
    main("features", run, description=__doc__)
