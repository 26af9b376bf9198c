"""DVC stage `prepare`: check every manifest row; write the prepared manifest, the rejects and metrics."""
from tristage.stage import main


def run(params, tracker):
    from tristage.data.prepare import run_prepare

    return run_prepare(params.prepare, tracker=tracker)


if __name__ == "__main__":
    main("prepare", run, description=__doc__)
