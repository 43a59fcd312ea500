"""A real web application for the transaction prober's tests: Django's admin site (session login with CSRF
protection), a small JSON API over Django's auth groups, a slow page and a login form without a CSRF token, on
sqlite, served by Django's own threaded development server.

    python -m tests.support.django_site --port PORT --dir DIR

The monitoring account `netmon` (staff, may view users and groups) gets the password in NETMON_PORTAL_PASSWORD.
`running_portal()` starts it as a child process and stops it by PID.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_module

USER = "netmon"
ROOT = Path(__file__).resolve().parent.parent.parent


def configure(directory: Path) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        SECRET_KEY=secrets.token_hex(32),
        ROOT_URLCONF="tests.support.django_urls",
        INSTALLED_APPS=[
            "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
            "django.contrib.sessions", "django.contrib.messages",
        ],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]},
        }],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(directory / "portal.sqlite3")}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast logins in tests
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        STATIC_URL="/static/",
    )
    django.setup()


def create_monitoring_user(password: str) -> None:
    from django.contrib.auth.models import Permission, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    user = User.objects.create_user(USER, f"{USER}@example.invalid", password, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_user", "view_group"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    configure(args.dir)
    create_monitoring_user(os.environ["NETMON_PORTAL_PASSWORD"])
    from django.core.servers.basehttp import WSGIServer, run
    from django.core.wsgi import get_wsgi_application

    WSGIServer.request_queue_size = 64
    run("127.0.0.1", args.port, get_wsgi_application(), threading=True)


@contextmanager
def running_portal(directory: Path, password: str) -> Iterator[str]:
    """The site on a free port; its base URL."""
    require_module("django", "Django")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.django_site", "--port", str(port), "--dir", str(directory)]
    with running(argv, log_path=str(directory / "portal.log"), env={"NETMON_PORTAL_PASSWORD": password}, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    main()
