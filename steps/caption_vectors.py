"""DVC stage `caption_vectors`: run the caption encoder once over the training captions, build the
vector table (data/caption_vectors/) and measure its fidelity to the encoder."""
from tristage.stage import main


def run(params, tracker):
    from tristage.captions.build import run_caption_vectors

    return run_caption_vectors(params.caption_vectors, tracker=tracker)


if __name__ == "__main__":
    main("caption_vectors", run, description=__doc__)
