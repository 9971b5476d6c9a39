"""The key footer: Textual's Footer, rebuilt only when its keys change, each key built in its final style.

Textual rebuilds the footer (removes and mounts every key, then lays them out) whenever the screen
says its bindings may have changed: twice for every focus change, the second time with the same
keys. And its FooterKey starts compact and is made non-compact by a data binding once mounted, each
change restyling the key at once. Under a log flood each rebuild was a 50-100 ms frame. This footer
skips a rebuild that would show the same keys, and sets each key's final value before it mounts:
the same keys, drawn the same.
"""
from __future__ import annotations

from collections.abc import Hashable

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class KeyFooter(Footer):
    _shown: Hashable = None
    """What the keys were built from (see `_keys_shown`), None before they are built."""

    def _keys_shown(self) -> Hashable:
        """Everything Footer.compose reads to build the keys, as a comparable value."""
        if not self._bindings_ready:
            return None
        keys = tuple((binding.key, binding.action, binding.description, binding.key_display, binding.show,
                      binding.group, binding.tooltip, enabled, tooltip)
                     for _, binding, enabled, tooltip in self.screen.active_bindings.values())
        return (keys, self.show_command_palette, self.app.ENABLE_COMMAND_PALETTE, self.app.COMMAND_PALETTE_BINDING)

    async def recompose(self) -> None:
        if not self.is_attached or self._pruning:
            return  # its screen was closed meanwhile (`T escape` typed at once), as Widget.recompose checks
        shown = self._keys_shown()
        if shown is not None and shown == self._shown:
            return  # the same keys: nothing to rebuild
        await super().recompose()

    def compose(self) -> ComposeResult:
        self._shown = self._keys_shown()
        for widget in super().compose():
            if isinstance(widget, FooterKey):
                # Bound keys end up with the footer's compact value; an unbound key (the command
                # palette's) keeps FooterKey's default, True, as it does in Textual.
                bound = "compact" in (widget._reactive_connect or {})
                compact = self.compact if bound else True
                widget.set_reactive(FooterKey.compact, compact)
                widget.set_class(compact, "-compact", update=False)
            yield widget
