"""Report sections: the functions that draw a results ``kind``, grouped by capability.

The command table names the section of each kind a command writes (``Results(kind, "module:function")`` in
:mod:`babelscope.commands`); the report imports it from here when it draws that kind. A kind no command names
is drawn by a section registered with ``@register_section("kind")`` (see :mod:`babelscope.report.base`), else by
the generic section from ``_generic.py`` (results summary and every table).
"""
