"""Text cells of the CSV files pokediff writes, safe to open in a spreadsheet, and read back exactly.

Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a
formula (a tab or carriage return in front is skipped first). pokediff writes names chosen by whoever
made the source into its CSVs (manifest.csv's source and form, quarantine.csv and ignored.csv, score's
nearest.csv), and a file named ``=HYPERLINK("http://…")`` would otherwise run when the file is
opened. Such a cell gets a leading apostrophe, the spreadsheets' own mark for "text, not a formula";
so that reading back is exact, a cell that starts with an apostrophe gets one more:

    neutralise("=1+2.png") == "'=1+2.png"      restore("'=1+2.png") == "=1+2.png"
    neutralise("'quoted")  == "''quoted"       restore(neutralise(s)) == s, for every s

Every other cell is written unchanged: the names of the sprite tarball and of ordinary datasets start
with a letter, digit or ``/``, so their manifests keep the same bytes (and sha256). pokediff reads back
only manifest.csv (``data.manifest.read_manifest`` restores its source and form columns).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_TEXT_MARK = "'"


def neutralise(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text; ``restore`` undoes it exactly."""
    return _TEXT_MARK + cell if cell.startswith((*FORMULA_STARTS, _TEXT_MARK)) else cell


def restore(cell: str) -> str:
    """The text that ``neutralise`` turned into ``cell``."""
    return cell[1:] if cell.startswith(_TEXT_MARK) else cell
