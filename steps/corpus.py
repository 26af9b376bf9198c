"""DVC stage `corpus`: synthesise the embedded demo corpus (espeak-ng) into data/raw/."""
from tristage.stage import main


def run(params, tracker):
    from tristage.corpus.build import build_corpus

    return build_corpus(params.corpus, tracker=tracker)


if __name__ == "__main__":
    main("corpus", run, description=__doc__)
