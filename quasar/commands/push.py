"""``quasar push``: publish a verified bundle to the Hub or an object store, with a model card."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="push",
    summary="Publish BUNDLE (verified, with a model card) to hf://ORG/REPO, s3://, gs://.",
    description="Other machines then score with `--bundle URL` and quasar-iqa[cpu] (no torch). "
                "Credentials and endpoints: HF_TOKEN / HF_ENDPOINT, AWS_* / AWS_ENDPOINT_URL, "
                "GOOGLE_APPLICATION_CREDENTIALS. See docs/remote.md.",
    target="quasar.bundle.push:push",
    options=[
        O.BUNDLE.but(help="bundle directory to publish (verified first)", default_text=None),
        opt("url", "where to: hf://ORG/REPO, s3://BUCKET/PATH, gs://BUCKET/PATH", metavar="URL"),
        opt("revision", "Hub branch to commit to (created from main when missing)",
            metavar="BRANCH", default_text="main"),
        opt("private", "create the Hub repository as private (an existing one keeps its "
            "visibility)"),
        opt("create_pr", "open a Hub pull request instead of committing to the branch"),
        O.OVERWRITE.but(help="replace a bundle already at an s3:// / gs:// URL"),
        opt("allow_random_init", "publish a randomly initialised bundle (tests; its card says "
            "the scores carry no meaning)"),
        opt("message", "commit message", metavar="TEXT", default_text="Upload QUASAR bundle "
            "<model>"),
        O.QUIET.but(help="print nothing"),
    ],
    examples=["quasar push ~/.cache/quasar/bundles/clip-rn50-nopos.openai hf://my-org/quasar-rn50",
              "quasar push bundle/ s3://models/quasar/rn50 --overwrite"],
)
