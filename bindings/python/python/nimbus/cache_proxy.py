"""`python -m nimbus.cache_proxy [--listen ADDR]`: the `nimbus-cache-proxy` service, in this process."""

if __name__ == "__main__":
    from nimbus._service import run

    run("cache-proxy")
