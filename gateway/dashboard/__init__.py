"""The read-only web page of ``[dashboard]``: one static page and a JSON endpoint, served by the standard library."""
