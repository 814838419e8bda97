"""Provider adapters, one module per provider, all behind ``channels.base.ChannelAdapter``."""
