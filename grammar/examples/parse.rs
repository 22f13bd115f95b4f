fn main() {
    let path = std::env::args().nth(1).unwrap_or_default();
    let src = std::fs::read_to_string(path).unwrap_or_default();
    let (file, errors) = keel_grammar::parse(&src);
    print!("{}", keel_grammar::sexp(&file));
    for e in errors {
        println!("{e:?}");
    }
}
