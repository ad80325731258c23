"""`python -m nimbus.logging_pipeline [--listen ADDR]`: the `nimbus-logging-pipeline` service, in this process."""

if __name__ == "__main__":
    from nimbus._service import run

    run("logging-pipeline")
