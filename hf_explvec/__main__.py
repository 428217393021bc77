from hf_explvec_cli import main

main()
