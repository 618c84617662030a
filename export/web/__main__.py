"""`python -m export.web --model exports/cgan` (what `make serve` runs): the colorize web app.

    python -m export.web [--model exports/cgan] [--version N] [--port 8000]   (default: the shipped colorizer)
    python -m export.web --serving-url http://localhost:8501/v1/models/cgan

With --model the app loads the export itself; with --serving-url it sends every photo to
a TF Serving server instead. For a model that takes hints (MODEL=guided) the result page
places colour hints with a click and takes a reference photo. It runs on waitress, a production WSGI server (see
`make_server` for what stays bounded under load); behind a reverse proxy for HTTPS.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

from export import PRECISION_HELP, PRECISIONS  # noqa: E402
from export.images import IMAGE_SUFFIXES  # noqa: E402
from export.web import create_app, make_server  # noqa: E402
from export.web.turing import sample_photos  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.web", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=None,
                        help="exports/<name> (its newest version) or exports/<name>/<version> "
                             "(default: the colorizer that ships with the project)")  # fmt: skip
    source.add_argument("--serving-url", help="a TF Serving model, http://HOST:8501/v1/models/NAME[/versions/N]")
    add("--version", type=int, default=None, help="export version with --model (default: the newest)")
    add("--temperature", type=float, default=None, help="for models that take one (default: the export's)")
    add("--precision", choices=PRECISIONS, default="auto",
        help=f"the export served in process (not --serving-url): {PRECISION_HELP}")
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    add("--port", type=int, default=8000, help="port (default: 8000)")
    add(
        "--photos",
        type=Path,
        default=None,
        help="folder of real colour photos for 'which one is real?' (default: scikit-image's sample photos)",
    )
    add(
        "--db",
        type=Path,
        default=None,
        help="SQLite file of the answers (default: turing.sqlite in the export's folder, or here with --serving-url)",
    )
    add("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default: 20)")
    add("--max-pixels", type=int, default=50_000_000, help="largest photo accepted, in pixels (default: 50,000,000)")
    add("--threads", type=int, default=4, help="requests handled at once; colorizations still queue (default: 4)")
    add("--connections", type=int, default=64,
        help="connections accepted at once; as many more wait, the rest are refused (default: 64)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.connections < 1:
        parser.error("--threads and --connections must be at least 1")

    if args.photos is not None:
        photos = sorted(path for path in args.photos.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            parser.error(f"--photos={args.photos}: no photos there")
    else:
        photos = sample_photos()

    if args.serving_url:
        from export.client import ServingClient, ServingError

        client = ServingClient(args.serving_url)
        colorize, label = functools.partial(client.colorize, temperature=args.temperature), client.label
        db = args.db or Path("turing.sqlite")
        try:
            guided = client.takes_hints()  # the page places hints only for a model that takes them
        except ServingError as error:  # a server still starting: photos get colour once it is up
            guided = False
            print(f"make serve: cannot read the model's signatures ({error}); the page offers no hints",
                  file=sys.stderr)  # fmt: skip
    else:
        from export import PRETRAINED
        from export.inference import Colorizer, ExportNotFound

        try:
            colorizer = Colorizer(args.model or PRETRAINED, args.version, args.precision)
        except ExportNotFound as error:
            print(f"make serve: {error}", file=sys.stderr)
            return 2
        colorize, label = functools.partial(colorizer.colorize, temperature=args.temperature), colorizer.label
        guided = colorizer.takes_hints
        # answers about the shipped model stay out of the installed package
        db = args.db or (colorizer.path.parent if args.model else Path.cwd()) / "turing.sqlite"

    max_upload_bytes = int(args.max_upload_mb * 2**20)
    app = create_app(colorize, label, photos, db, max_upload_bytes, args.max_pixels, guided)
    server = make_server(app, args.host, args.port, max_upload_bytes, args.threads, args.connections)
    print(f"serving {label} on http://{args.host}:{server.effective_port}/ (answers in {db}); Ctrl-C stops",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
