"""The README's picture: a screenshot of an HTML report (default: the demo's), by headless Chromium.

    python bench/screenshot.py runs/demo/report/index.html docs/img/report.png [--width 1280 --height 1800]

Needs chromium and chromium-driver (Debian: `apt-get install -y chromium chromium-driver`) and selenium
(`pip install .[browser]`). The page is shot at --width x --height CSS pixels from its top (the run
summary and the first sections), then scaled to --out-width and saved as an optimized PNG.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path


def shoot(page: Path, width: int, height: int) -> bytes:
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
        driver.execute_script("return document.readyState")  # images are local files: loaded with the page
        return driver.get_screenshot_as_png()
    finally:
        driver.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", default="runs/demo/report/index.html")
    p.add_argument("out", nargs="?", default="docs/img/report.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1800)
    p.add_argument("--out-width", type=int, default=960)
    a = p.parse_args()
    page = Path(a.report)
    if not page.exists():
        print(f"screenshot: {page} not found: run `make demo` first", file=sys.stderr)
        return 2
    if not shutil.which("chromedriver"):
        print("screenshot: chromedriver not found: apt-get install -y chromium chromium-driver", file=sys.stderr)
        return 2
    from PIL import Image

    img = Image.open(io.BytesIO(shoot(page, a.width, a.height))).convert("RGB")
    img = img.resize((a.out_width, round(img.height * a.out_width / img.width)), Image.LANCZOS)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(a.out, optimize=True)
    print(f"{a.out}: {img.width}x{img.height}, {Path(a.out).stat().st_size // 1024} KiB, from {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
