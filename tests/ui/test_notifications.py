"""Notifications render in the real toast rack (Pilot hides it unless asked): an error about
untrusted text is shown as literal text, and the app carries on."""

from __future__ import annotations

from pathlib import Path

from qixtui.ui.app import QixtuiApp
from ui.sessions import screen_text

SIZE = (140, 40)


async def test_a_bad_filter_is_a_toast_not_a_crash(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        assert not app.apply_filter("[b]x[/b] duration>zz")
        await pilot.pause()
        text = screen_text(app)
        assert "'duration>zz': write duration>2s" in text
        assert app.is_running


async def test_a_bad_jump_time_is_a_toast_not_a_crash(shop: Path) -> None:
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        app.jump_to("[@click=app.quit]soon")
        await pilot.pause()
        assert "not a time: [@click=app.quit]soon" in screen_text(app)
        assert app.is_running
