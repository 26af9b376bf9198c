"""DVC stage `evaluate`: each trained stage on the validation split (mel_loss, mel_top1, speaker_acc band,
fresh speaker/emotion probes on the emotion vectors, caption cosine) and audio samples.

Writes metrics/evaluate.json, plots/evaluate/, data/samples/ (wavs + samples.json).
"""
from tristage.stage import main


def run(params, tracker):
    from tristage.evaluation.run import run_evaluate

    return run_evaluate(params, tracker=tracker)


if __name__ == "__main__":
    main("evaluate", run, description=__doc__)
