"""Built-in feeds. Each module defines one Feed, written only against dashboard's public API;
the module's name is the feed type's name in the config."""
