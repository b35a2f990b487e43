"""fwproxy: let any tool talk to a FotoWeb tenant without knowing OAuth."""

__version__ = "0.1.0"
