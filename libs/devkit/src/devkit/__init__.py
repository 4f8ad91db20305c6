"""devkit: what only `make run`, `make test` and bench/ use, kept out of every image.

The dev stack (`python -m devkit.devstack run`), the keeper each process of `make run` runs
under (devkit.keeper), the fake OpenAI and Hugging Face servers (devkit.fakes) and the
pytest plugin with real Postgres and Redis (devkit.testing). Production code imports none of
it: the images install only libs/common and their own app (tests/deploy/test_image_install.py).
"""
