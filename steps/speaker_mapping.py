"""DVC stage `speaker_mapping`: speaker name -> class id (top_k speakers with >= min_samples utterances)."""
from tristage.stage import main


def run(params, tracker):
    from tristage.data.speakers import run_speaker_mapping

    return run_speaker_mapping(params.speaker_mapping, tracker=tracker)


if __name__ == "__main__":
    main("speaker_mapping", run, description=__doc__)
