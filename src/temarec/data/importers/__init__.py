"""The importers of ``temarec prepare``, one module per raw format; each registers itself (and its CLI flags) with
:func:`temarec.data.prepare.register_importer`, so a new format is one new module here."""
