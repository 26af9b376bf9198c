"""DVC stage `annotate`: measure pitch, speaking rate, SNR and reverberation of every prepared utterance,
fill the missing attribute columns from corpus-fitted bins and caption the rows that have no caption."""
from tristage.stage import main


def run(params, tracker):
    from tristage.annotation.run import run_annotate

    return run_annotate(params.annotate, lexicon=params.caption_vectors.lexicon, tracker=tracker)


if __name__ == "__main__":
    main("annotate", run, description=__doc__)
