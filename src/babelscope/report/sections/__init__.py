"""Report sections, one module per results ``kind``.

Every public module here is imported when a report is rendered; a module registers its section with
``@register_section("kind")`` (see :mod:`babelscope.report.base`). Kinds without a module get the generic
section from ``_generic.py`` (results summary and every table).
"""
