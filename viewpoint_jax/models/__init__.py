"""Networks, each with its own checkpoint loading: the Wan DiT with Pano and subregion attention
(`dit`), the Wan VAE (`vae`) and the autoencoder protocol (`autoencoder`), umT5 (`umt5`), its
tokenizer (`tokenizer`) and the text encoder that joins them (`text_encoder`); attention backends
(`attention`).
"""
