"""URLs of the test site (tests/support/django_site.py): Django's admin, a JSON API over auth groups, a page that
answers after a delay, and a login form that lost its CSRF token."""

from __future__ import annotations

import json
import time

from django.contrib import admin
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

MAINTENANCE_LOGIN = """<!doctype html><html><body><h1>Đăng nhập</h1>
<form method="post" action="/admin/login/"><input name="username"><input name="password" type="password"></form>
</body></html>"""


@csrf_exempt
def groups(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse({"groups": list(Group.objects.values("id", "name"))})
    name = json.loads(request.body or b"{}").get("name")
    if not name:
        return JsonResponse({"error": "name is required"}, status=400)
    group = Group.objects.create(name=name)
    return JsonResponse({"id": group.id, "name": group.name}, status=201)


@csrf_exempt
def group(request: HttpRequest, group_id: int) -> HttpResponse:
    found = Group.objects.filter(id=group_id).first()
    if found is None:
        return JsonResponse({"error": "no such group"}, status=404)
    if request.method == "DELETE":
        found.delete()
        return HttpResponse(status=204)
    return JsonResponse({"id": found.id, "name": found.name, "permissions": found.permissions.count()})


def slow(request: HttpRequest) -> HttpResponse:
    time.sleep(float(request.GET.get("seconds", "2")))
    return HttpResponse("finally", content_type="text/plain")


def maintenance_login(request: HttpRequest) -> HttpResponse:
    return HttpResponse(MAINTENANCE_LOGIN)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/groups/", groups),
    path("api/groups/<int:group_id>/", group),
    path("slow/", slow),
    path("maintenance/login/", maintenance_login),
]
