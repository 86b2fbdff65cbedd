"""load_entry / unload: every entry-point style, lenient arity, import isolation, errors."""

from __future__ import annotations

import sys

import pytest

from edgerun.errors import EntrypointError
from edgerun.http import Request
from edgerun.runtime import AsgiHandler, Context, Env, load_entry, unload

ENV = Env(vars={"API_VERSION": "2"})


async def call(entry, url="http://example.com/", *, method="GET", body=None, env=ENV):
    """Call the normalised handler directly and return the response text."""
    response = await entry.handler(Request(method, url, body=body), env, Context("rid-1"))
    return await response.text()


# -- each entry-point style ------------------------------------------------------------


async def test_native_fetch_is_used_as_is(make_project):
    root = make_project(
        {
            "app.py": """
            from edgerun.http import Response

            async def fetch(request, env, ctx):
                return Response(f"{request.path} v{env.API_VERSION} {ctx.request_id}")
            """
        }
    )
    entry = load_entry(root, "app.py")
    assert entry.kind == "fetch"
    assert entry.handler is entry.module.fetch  # no wrapper for the native form
    assert entry.asgi_app is None
    assert await call(entry, "http://example.com/users") == "/users v2 rid-1"


@pytest.mark.parametrize(
    ("signature", "body", "expected"),
    [
        ("fetch(request)", "request.path", "/p"),
        ("fetch(request, env)", "request.path + env.API_VERSION", "/p2"),
        ("fetch()", "'none'", "none"),
        ("fetch(*args)", "str(len(args))", "3"),
        ("fetch(request, env, ctx, extra='x')", "extra", "x"),
    ],
)
async def test_handlers_get_only_the_arguments_they_declare(
    make_project, signature, body, expected
):
    root = make_project(
        {
            "app.py": f"""
            from edgerun.http import Response

            async def {signature}:
                return Response({body})
            """
        }
    )
    assert await call(load_entry(root, "app.py"), "http://example.com/p") == expected


async def test_plain_def_handler_is_called_directly(make_project):
    root = make_project(
        {
            "app.py": """
            from edgerun.http import Response

            def fetch(request):
                return Response("sync " + request.method)
            """
        }
    )
    assert await call(load_entry(root, "app.py")) == "sync GET"


def test_a_handler_needing_more_than_request_env_ctx_is_rejected(make_project):
    root = make_project(
        {
            "app.py": """
            async def fetch(request, env, ctx, extra):
                pass
            """
        }
    )
    with pytest.raises(EntrypointError, match=r"requires 4 arguments.*\(request, env, ctx\)"):
        load_entry(root, "app.py")


async def test_workers_default_class(make_project):
    root = make_project(
        {
            "app.py": """
            from workers import Response, WorkerEntrypoint

            class Default(WorkerEntrypoint):
                async def fetch(self, request):
                    return Response.json(
                        {"v": self.env.API_VERSION, "rid": self.ctx.request_id, "m": request.method}
                    )
            """
        }
    )
    entry = load_entry(root, "app.py")
    assert entry.kind == "workers"
    assert await call(entry) == '{"v":"2","rid":"rid-1","m":"GET"}'


async def test_workers_on_fetch(make_project):
    root = make_project(
        {
            "app.py": """
            from workers import Response, handler

            @handler
            async def on_fetch(request, env):
                return Response("on_fetch " + env.API_VERSION)
            """
        }
    )
    entry = load_entry(root, "app.py")
    assert entry.kind == "workers"
    assert await call(entry) == "on_fetch 2"


async def test_asgi_function_app(make_project):
    root = make_project(
        {
            "app.py": """
            async def app(scope, receive, send):
                assert scope["type"] == "http"
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": scope["path"].encode()})
            """
        }
    )
    entry = load_entry(root, "app.py")
    assert entry.kind == "asgi"
    assert isinstance(entry.handler, AsgiHandler)
    assert entry.asgi_app is entry.module.app
    assert await call(entry, "http://example.com/raw") == "/raw"


@pytest.mark.parametrize("name", ["app", "application", "asgi"])
async def test_asgi_framework_object_under_common_names(make_project, name):
    root = make_project(
        {
            "app.py": f"""
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def home(request):
                return PlainTextResponse("starlette")

            {name} = Starlette(routes=[Route("/", home)])
            """
        }
    )
    entry = load_entry(root, "app.py")
    assert entry.kind == "asgi"
    assert await call(entry) == "starlette"


async def test_detection_order_prefers_native_fetch(make_project):
    root = make_project(
        {
            "app.py": """
            from edgerun.http import Response
            from workers import WorkerEntrypoint

            async def fetch(request, env, ctx):
                return Response("native")

            class Default(WorkerEntrypoint):
                async def fetch(self, request):
                    return Response("workers")

            async def app(scope, receive, send):
                raise AssertionError("not this one")
            """
        }
    )
    entry = load_entry(root, "app.py")
    assert entry.kind == "fetch"
    assert await call(entry) == "native"


async def test_scheduled_is_picked_up(make_project):
    root = make_project(
        {
            "app.py": """
            from edgerun.http import Response
            from workers import WorkerEntrypoint

            seen = []

            async def fetch(request):
                return Response("ok")

            async def scheduled(event, env):
                seen.append((event, env.API_VERSION))
            """,
            "worker.py": """
            from workers import Response, WorkerEntrypoint

            seen = []

            class Default(WorkerEntrypoint):
                async def fetch(self, request):
                    return Response("ok")

                async def scheduled(self, event, env, ctx):
                    seen.append((event, self.env.API_VERSION))
            """,
        }
    )
    for main in ("app.py", "worker.py"):
        entry = load_entry(root, main)
        assert entry.scheduled is not None
        await entry.scheduled("cron-event", ENV, Context("rid"))
        assert entry.module.seen == [("cron-event", "2")]
    assert (
        load_entry(make_project({"app.py": "def fetch(): pass"}, "p2"), "app.py").scheduled is None
    )


# -- main strings ----------------------------------------------------------------------


async def test_main_names_a_dotted_module_and_object(make_project):
    root = make_project(
        {
            "pkg/__init__.py": "",
            "pkg/helper.py": "GREETING = 'from pkg'\n",
            "pkg/mod.py": """
            from edgerun.http import Response
            from . import helper

            async def obj(request):
                return Response(helper.GREETING)

            async def fetch(request):
                return Response("not this one")
            """,
        }
    )
    entry = load_entry(root, "pkg.mod:obj")
    assert entry.kind == "fetch"
    assert entry.module.__name__ == "pkg.mod"
    assert await call(entry) == "from pkg"


async def test_main_as_module_name_without_object(make_project):
    root = make_project(
        {"server.py": "from edgerun.http import Response\nasync def fetch(): return Response('m')"}
    )
    assert await call(load_entry(root, "server")) == "m"


async def test_main_file_in_a_subdirectory_imports_its_siblings(make_project):
    root = make_project(
        {
            "src/worker.py": """
            from edgerun.http import Response
            import sibling

            async def fetch(request):
                return Response(sibling.VALUE)
            """,
            "src/sibling.py": "VALUE = 'sibling'\n",
        }
    )
    assert await call(load_entry(root, "src/worker.py")) == "sibling"


async def test_main_object_may_be_a_workers_class_or_an_asgi_app(make_project):
    root = make_project(
        {
            "app.py": """
            from workers import Response, WorkerEntrypoint

            class Api(WorkerEntrypoint):
                async def fetch(self):
                    return Response("api class")

            async def raw(scope, receive, send):
                await send({"type": "http.response.start", "status": 201})
                await send({"type": "http.response.body", "body": b"raw"})
            """
        }
    )
    assert await call(load_entry(root, "app.py:Api")) == "api class"
    entry = load_entry(root, "app:raw")
    assert entry.kind == "asgi"
    assert await call(entry) == "raw"


# -- isolation and reload ----------------------------------------------------------------


async def test_two_projects_with_app_py_in_one_process(make_project):
    source = """
    from edgerun.http import Response
    import helpers

    async def fetch(request):
        return Response(helpers.NAME)
    """
    one = make_project({"app.py": source, "helpers.py": "NAME = 'one'\n"}, "one")
    two = make_project({"app.py": source, "helpers.py": "NAME = 'two'\n"}, "two")
    entry_one = load_entry(one, "app.py")
    entry_two = load_entry(two, "app.py")
    assert entry_one.module is not entry_two.module
    assert entry_one.module.__name__ != entry_two.module.__name__
    assert await call(entry_one) == "one"
    assert await call(entry_two) == "two"
    # Dotted mains with the same names are told apart too (a new version of a project).
    assert await call(load_entry(one, "app:fetch")) == "one"
    assert await call(load_entry(two, "app:fetch")) == "two"


async def test_unload_then_load_picks_up_an_edit(make_project):
    root = make_project(
        {
            "app.py": """
            from edgerun.http import Response
            import helper

            async def fetch(request):
                return Response(helper.VALUE)
            """,
            "helper.py": "VALUE = 'before'\n",
        }
    )
    first = load_entry(root, "app.py")
    assert await call(first) == "before"
    (root / "helper.py").write_text("VALUE = 'after the edit'\n")
    removed = unload(root)
    assert "helper" in removed
    assert first.module.__name__ in removed
    assert "helper" not in sys.modules
    assert str(root.resolve()) not in sys.path
    assert await call(load_entry(root, "app.py")) == "after the edit"
    assert await call(first) == "before"  # a loaded entry keeps its own modules


# -- errors --------------------------------------------------------------------------------


def test_no_entry_point_says_what_was_looked_for(make_project):
    root = make_project({"app.py": "app = 42\nfetch = 'not callable'\n"})
    with pytest.raises(EntrypointError) as info:
        load_entry(root, "app.py")
    message = str(info.value)
    for looked_for in ("fetch(request, env, ctx)", "Default(WorkerEntrypoint)", "on_fetch"):
        assert looked_for in message
    assert "`app`, `application` or `asgi`" in message
    assert 'main = "module:object"' in message


def test_import_error_carries_the_users_traceback(make_project):
    root = make_project(
        {
            "app.py": """
            import helper

            async def fetch(request):
                pass
            """,
            "helper.py": "x = 1\ny = x / 0\n",
        }
    )
    with pytest.raises(EntrypointError) as info:
        load_entry(root, "app.py")
    message = str(info.value)
    assert "ZeroDivisionError" in message
    assert f'{root.resolve() / "helper.py"}", line 2' in message
    assert "importlib" not in message  # trimmed to the user's frames
    assert "helper" not in sys.modules  # a failed load leaves nothing behind


def test_syntax_error_names_file_and_line(make_project):
    root = make_project({"app.py": "async def fetch(request):\n    return (\n"})
    with pytest.raises(EntrypointError, match=r"SyntaxError") as info:
        load_entry(root, "app.py")
    assert "app.py" in str(info.value)
    assert "line 2" in str(info.value)


def test_missing_dependency_is_an_import_error_not_a_missing_main(make_project):
    root = make_project({"app.py": "import no_such_dependency_xyz\n"})
    with pytest.raises(EntrypointError, match=r"ModuleNotFoundError.*no_such_dependency_xyz"):
        load_entry(root, "app:fetch")


@pytest.mark.parametrize(
    ("main", "match"),
    [
        ("missing.py", "does not exist"),
        ("nosuchmodule:app", "no module 'nosuchmodule'"),
        ("app:nothing", "has no attribute 'nothing'"),
        ("../outside.py", "outside the project"),
        ("app:", "is not valid"),
        ("json:app", "taken by"),
        ("app:NotAnEntry", "must subclass workers.WorkerEntrypoint"),
    ],
)
def test_bad_main_strings(make_project, main, match):
    root = make_project(
        {
            "app.py": "async def fetch(request): pass\nclass NotAnEntry: pass\n",
            "json.py": "app = None\n",
        }
    )
    with pytest.raises(EntrypointError, match=match):
        load_entry(root, main)
