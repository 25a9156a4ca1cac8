"""The README's picture: a screenshot of an HTML report (default: the demo's), by headless Chromium.

    python bench/screenshot.py runs/demo/report/index.html docs/img/report.png
    python bench/screenshot.py PAGE OUT --sections ''          # just the page's top, --height px of it

Needs chromium and chromium-driver (Debian: `apt-get install -y chromium chromium-driver`) and selenium
(`pip install .[browser]`). The whole page is shot at --width CSS pixels; each of --sections (the ids of
the report's <h2> headings) is cut from its heading to the next one, at most --tile-height px, and the
cuts are laid out in two columns, so one picture shows what several stages made.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path


def shoot(page: Path, width: int, height: int, sections: list[str]) -> tuple[bytes, list[tuple[int, int]]]:
    """The page's screenshot (the whole page when sections are asked for) and each section's top and bottom."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.set_window_size(width, height)
        driver.get(page.resolve().as_uri())
        driver.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        driver.execute_script("return Promise.all([...document.images].map(i => i.decode().catch(() => 0)))")
        spans = []
        if sections:
            full = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(full + 400, 16000))  # the window's frame takes some of its height
            tops = driver.execute_script("return [...document.querySelectorAll('h2')].map(h => [h.id, h.offsetTop])")
            tops.append(["", full])
            for name in sections:
                i = next((k for k, (id_, _) in enumerate(tops) if id_ == name), None)
                if i is not None:
                    spans.append((tops[i][1] - 8, tops[i + 1][1] - 8))
        return driver.get_screenshot_as_png(), spans
    finally:
        driver.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", default="runs/demo/report/index.html")
    p.add_argument("out", nargs="?", default="docs/img/report.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1800)
    p.add_argument("--out-width", type=int, default=1200)
    p.add_argument("--sections", default="run,index,map,patches,saliency,dissect,stylize,visualize")
    p.add_argument("--tile-height", type=int, default=900)
    p.add_argument("--colors", type=int, default=256, help="palette colours (0: full RGB)")
    a = p.parse_args()
    page = Path(a.report)
    if not page.exists():
        print(f"screenshot: {page} not found: run `make demo` first", file=sys.stderr)
        return 2
    if not shutil.which("chromedriver"):
        print("screenshot: chromedriver not found: apt-get install -y chromium chromium-driver", file=sys.stderr)
        return 2
    from PIL import Image

    sections = [s for s in a.sections.split(",") if s]
    png, spans = shoot(page, a.width, a.height, sections)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if spans:  # two columns of section cuts, each scaled to half the output's width
        half = a.out_width // 2
        tiles = [img.crop((0, top, img.width, min(bottom, top + a.tile_height, img.height))) for top, bottom in spans]
        tiles = [t.resize((half, round(t.height * half / t.width)), Image.LANCZOS) for t in tiles]
        columns = [tiles[0::2], tiles[1::2]]
        heights = [sum(t.height for t in col) for col in columns]
        img = Image.new("RGB", (a.out_width, max(heights)), "white")
        for c, col in enumerate(columns):
            y = 0
            for tile in col:
                img.paste(tile, (c * half, y))
                y += tile.height
    else:
        img = img.resize((a.out_width, round(img.height * a.out_width / img.width)), Image.LANCZOS)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if a.colors:  # a palette PNG: a third of the bytes in the repository, hardly visible at this size
        img = img.quantize(a.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    img.save(a.out, optimize=True)
    print(f"{a.out}: {img.width}x{img.height}, {Path(a.out).stat().st_size // 1024} KiB, from {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
